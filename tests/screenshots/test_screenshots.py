"""The built docs and TensorBoard on the demo's logs, in headless chromium, as a reader sees them.

Opt-in (``python -m pytest tests/screenshots --screenshots``, see ``conftest.py``). Each test
checks what a program can (a table's ``scrollWidth`` against its ``clientWidth``, the runs and
values TensorBoard serves, the size of the image strips) and leaves its screenshots in
``docs/_build/screenshots/`` for a person to look at. The browser, TensorBoard and demo helpers
are those of ``docs/make_screenshots.py``, which takes the committed screenshots.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import read_events

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "_build" / "screenshots"
WIDTH = 1280
RUNS = ("A_32_digits/version_0", "B_1400_digits/version_0")


def _load_make_screenshots():
    spec = importlib.util.spec_from_file_location(
        "make_screenshots", ROOT / "docs" / "make_screenshots.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shots = _load_make_screenshots()


@pytest.fixture(scope="module")
def docs_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation built as CI builds it (warnings are errors)."""
    out = tmp_path_factory.mktemp("html")
    command = [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b", "html"]
    subprocess.run([*command, str(ROOT / "docs"), str(out)], check=True, timeout=900)
    OUT.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def demo_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The logs of ``examples/vae_memorization.py --fast`` (runs A and B)."""
    out = tmp_path_factory.mktemp("demo")
    shots.run_demo(out, fast=True)
    OUT.mkdir(parents=True, exist_ok=True)
    return out


def pages(html: Path) -> list[Path]:
    skip = {"genindex.html", "search.html", "py-modindex.html"}
    return sorted(p for p in html.glob("*.html") if p.name not in skip)


def test_every_table_fits_the_article_and_no_number_wraps_at_1280_px(docs_html: Path) -> None:
    problems = []
    for page in pages(docs_html):
        measured = shots.measure_page(page, WIDTH)
        assert measured["viewport"] == WIDTH
        if measured["page"] > WIDTH:
            problems.append((page.name, "page wider than the window", measured["page"]))
        for table in measured["tables"]:
            if table["scrollWidth"] > table["clientWidth"]:
                problems.append((page.name, table["header"][:3], table["scrollWidth"]))
            if table["wrappedNumbers"]:
                problems.append((page.name, table["header"][:3], table["wrappedNumbers"]))
    assert problems == []
    for name in ("measurements", "getting_started", "api"):
        shots.screenshot((docs_html / f"{name}.html").as_uri(), OUT / f"docs_{name}.png",
                         size=(WIDTH, 2400), wait_ms=3000)  # fmt: skip


def test_the_table_measure_sees_the_key_table_overflow_without_the_stylesheet(
    docs_html: Path,
) -> None:
    """The check above can fail: without ``memwatch.css`` and the ``<wbr>`` after the keys'
    slashes, the measurements key table is wider than the article at 1,280 px (issue 24)."""
    page = docs_html / "measurements.html"
    bare = page.with_name("bare_measurements.html")
    text = page.read_text().replace("_static/memwatch.css", "_static/absent.css")
    bare.write_text(text.replace("<wbr>", ""))
    try:
        key_table = shots.measure_page(bare, WIDTH)["tables"][0]
    finally:
        bare.unlink()
    assert key_table["header"][0] == "key"
    assert key_table["scrollWidth"] > key_table["clientWidth"]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as answer:
        return json.load(answer)


def test_tensorboard_serves_train_and_val_as_runs_of_their_own(demo_logs: Path) -> None:
    with shots.serve_tensorboard(demo_logs, seconds=120) as base:
        runs = get_json(f"{base}/data/runs")
        for run in RUNS:
            # in the order TensorBoard colours them: the logger's run, then train, then val
            order = [runs.index(name) for name in (run, f"{run}/train", f"{run}/val")]
            assert order == sorted(order)
        tags = get_json(f"{base}/data/plugin/scalars/tags")
        for run in RUNS:
            for split in ("train", "val"):
                assert "memwatch/recovery/mre" in tags[f"{run}/{split}"]
                assert "memwatch/recovery/mre" not in tags[run]
                served = scalars(base, f"{run}/{split}", "memwatch/recovery/mre")
                logged = scalars(base, run, f"memwatch/recovery/mre/{split}")
                assert served == logged and len(served) >= 2
        layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
        charts = {
            chart["title"]: chart["multiline"]["tag"]
            for category in layout["category"]
            for chart in category["chart"]
        }
        assert charts["mre: train vs val"] == ["^memwatch/recovery/mre$"]
        # the page itself loads and lists the runs, the legend of each chart (the Time Series
        # dashboard, TensorBoard's landing page, draws its run list outside any shadow DOM)
        dom = shots.dump_dom(f"{base}/#timeseries")
        for run in RUNS:
            assert f"{run}/train" in dom and f"{run}/val" in dom
        shots.screenshot(f"{base}/#timeseries", OUT / "tensorboard_timeseries.png")
        for name, fragment in shots.VIEWS:
            shots.screenshot(f"{base}/{fragment}", OUT / name)
            assert (OUT / name).stat().st_size > 10_000  # more than a blank page


def scalars(base: str, run: str, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``tag`` in ``run``, as TensorBoard serves them."""
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    served = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
    return [(step, value) for _, step, value in served]


def test_the_demo_digits_are_images_of_at_least_64_pixels_a_side(demo_logs: Path) -> None:
    for run in RUNS:
        events = read_events(demo_logs / run)
        images = [tag for tag in events.Tags()["images"] if "/pairs/" in tag or "nearest" in tag]
        assert images
        for tag in images:
            image = events.Images(tag)[-1]
            assert image.height >= 64 and image.width >= 64, tag
