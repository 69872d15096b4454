"""Screenshots of TensorBoard showing a real memwatch run, for the documentation; and the browser
and TensorBoard helpers the screenshot tests (``tests/screenshots``) share with it.

    python docs/make_screenshots.py --full     # the full demo: the committed screenshots
    python docs/make_screenshots.py            # the demo in --fast mode (under a minute)

Runs ``examples/vae_memorization.py`` into a temporary log folder, starts ``tensorboard
--logdir <it> --host 127.0.0.1 --port <free port>`` (loopback only, stopped at the end), and takes
PNG screenshots of its views with headless chromium (``chromium`` or ``chromium-browser`` on
``PATH``; on Debian ``apt-get install -y chromium``) into ``docs/_static/``. Nothing is written
outside the temporary folder and ``docs/_static/``.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "docs" / "_static"

#: Smoothing off (the curves are sparse: the default 0.6 shows -2.08 for a logged -2.78) and
#: outliers kept in the y range, in the hash parameters of TensorBoard's scalar dashboards.
_PLAIN = "_smoothingWeight=0&_ignoreYOutliers=false"
#: train and val of the recovery errors' median: the tag of the runs `train` and `val`.
_TRAIN_VAL = "memwatch%2Frecovery%2Fmre%24"
_RECOVERY = "memwatch%2Frecovery%2F(mre_gap%7Cks_pvalue)%24"
_DENSITY = "memwatch%2Fdensity%2F(dip%7Cdecay)(%2Fgap)%3F%24"

#: (file name, URL fragment after the TensorBoard address): what the docs show.
VIEWS: tuple[tuple[str, str], ...] = (
    ("tensorboard_train_val.png", f"#scalars&{_PLAIN}&tagFilter={_TRAIN_VAL}"),
    ("tensorboard_custom_scalars.png", f"#custom_scalars&{_PLAIN}"),
    ("tensorboard_recovery.png", f"#scalars&{_PLAIN}&tagFilter={_RECOVERY}"),
    ("tensorboard_density.png", f"#scalars&{_PLAIN}&tagFilter={_DENSITY}"),
    ("tensorboard_images.png", "#images&tagFilter=memwatch"),
    ("tensorboard_text.png", "#text&tagFilter=memwatch"),
    ("tensorboard_distributions.png", "#distributions&tagFilter=memwatch%2Frecovery"),
)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)

#: Added to a copy of a built docs page: after the page loads, writes as JSON into ``<pre
#: id="memwatch-measure">`` the viewport and page widths and, per table of the article, its
#: scroll and client widths and its numeric (right-aligned) cells that wrap onto two lines.
MEASURE_SCRIPT = """<script>
window.addEventListener("load", () => {
  const lines = (cell) => {
    const range = document.createRange();
    range.selectNodeContents(cell);
    const tops = [...range.getClientRects()].filter((r) => r.width > 0).map((r) => r.top);
    tops.sort((a, b) => a - b);
    let count = tops.length ? 1 : 0;
    for (let i = 1; i < tops.length; i++) if (tops[i] - tops[i - 1] > 6) count++;
    return count;
  };
  const tables = [...document.querySelectorAll("article table.docutils")].map((table) => {
    const wrapper = table.closest(".table-wrapper") || table.parentElement;
    const numbers = [...table.querySelectorAll("td.text-right, th.text-right")];
    return {
      header: [...table.querySelectorAll("th")].map((th) => th.textContent.trim()),
      scrollWidth: wrapper.scrollWidth,
      clientWidth: wrapper.clientWidth,
      wrappedNumbers: numbers.filter((c) => lines(c) > 1).map((c) => c.textContent.trim()),
    };
  });
  const out = {viewport: window.innerWidth, page: document.documentElement.scrollWidth, tables};
  const pre = document.createElement("pre");
  pre.id = "memwatch-measure";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"TensorBoard did not answer at {url} within {seconds} s"
                ) from None
            time.sleep(0.5)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no chromium on PATH: apt-get install -y chromium")


def run_chromium(args: list[str], size: tuple[int, int], wait_ms: int) -> str:
    """Headless chromium on ``args`` in a ``size`` window after ``wait_ms`` of (virtual) page
    time, with a throw-away profile, bounded to two minutes; its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium(),
                *CHROMIUM_FLAGS,
                f"--window-size={size[0]},{size[1]}",
                f"--virtual-time-budget={wait_ms}",
                f"--user-data-dir={profile}",
                *args,
            ],
            check=True,
            timeout=120,
            capture_output=True,
            text=True,
        )
    return done.stdout


def screenshot(
    url: str, out: Path, size: tuple[int, int] = (1400, 1000), wait_ms: int = 15000
) -> None:
    """A PNG of ``url`` in a ``size`` window."""
    run_chromium([f"--screenshot={out}", url], size, wait_ms)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url}")


def dump_dom(url: str, size: tuple[int, int] = (1400, 1000), wait_ms: int = 15000) -> str:
    """The DOM of ``url`` as HTML once its scripts have run."""
    return run_chromium(["--dump-dom", url], size, wait_ms)


def measure_page(page: Path, width: int = 1280) -> dict:
    """What :data:`MEASURE_SCRIPT` measures on the built docs page ``page`` in a ``width`` pixel
    window: a copy of the page with the script, beside it so that its styles load."""
    copy = page.with_name(f"_measured_{page.name}")
    copy.write_text(page.read_text().replace("</body>", f"{MEASURE_SCRIPT}</body>"))
    try:
        dom = dump_dom(copy.as_uri(), size=(width, 900), wait_ms=5000)
    finally:
        copy.unlink()
    found = re.search(r'<pre id="memwatch-measure">(.*?)</pre>', dom, re.DOTALL)
    if found is None:
        raise RuntimeError(f"the measuring script did not run on {page.name}")
    return json.loads(html.unescape(found.group(1)))


def run_demo(out: Path, fast: bool) -> None:
    """``examples/vae_memorization.py`` (``--fast`` unless not ``fast``) into ``out``."""
    demo = [sys.executable, str(ROOT / "examples" / "vae_memorization.py"), "--out", str(out)]
    subprocess.run(demo + (["--fast"] if fast else []), check=True, cwd=out)


@contextlib.contextmanager
def serve_tensorboard(logdir: Path, seconds: float = 60) -> Iterator[str]:
    """TensorBoard on ``logdir``, on loopback at a free port, for the ``with`` block: its
    address, once it answers and has had 3 s to read the event files. Stopped at the end."""
    port = free_port()
    board = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base, seconds)
        time.sleep(3)  # let it load the event files
        yield base
    finally:
        board.terminate()
        try:
            board.wait(timeout=30)
        except subprocess.TimeoutExpired:
            board.kill()
            board.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full demo instead of --fast")
    args = parser.parse_args(argv)
    chromium()
    STATIC.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as logs:
        run_demo(Path(logs), fast=not args.full)
        with serve_tensorboard(Path(logs)) as base:
            for name, fragment in VIEWS:
                screenshot(f"{base}/{fragment}", STATIC / name)
                print(f"wrote {(STATIC / name).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
