"""``examples/plot_curves.py``: the PNG of the demo's curves, from the --fast run's event files."""

from __future__ import annotations

import pytest

from tests.examples.conftest import load_example, scalar_events

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png_from_the_fast_run(demo_fast, tmp_path, capsys):
    plot_curves = load_example("plot_curves")
    out = plot_curves.main(["--logdir", str(demo_fast.out), "--out", str(tmp_path / "c.png")])
    assert out == tmp_path / "c.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert f"wrote {out}" in capsys.readouterr().out


def test_reader_agrees_with_event_accumulator_and_picks_the_runs(demo_fast):
    plot_curves = load_example("plot_curves")
    runs = plot_curves.latest_runs(demo_fast.out)
    assert sorted(runs) == ["A_32_digits", "B_1400_digits"]
    for name, key in (("A_32_digits", "A"), ("B_1400_digits", "B")):
        assert str(runs[name]) == demo_fast.results[key]["log_dir"]
        reference = scalar_events(runs[name])
        scalars = plot_curves.read_scalars(runs[name])
        for tag in [tag for _, tags, _, _ in plot_curves.PANELS for tag, _ in tags]:
            steps, values = scalars[tag]
            assert list(zip(steps, values, strict=True)) == reference[tag]


def test_latest_runs_takes_the_newest_version_with_events(tmp_path):
    plot_curves = load_example("plot_curves")
    for version in ("version_0", "version_2", "version_10"):
        (tmp_path / "run" / version).mkdir(parents=True)
    for version in ("version_0", "version_2"):
        (tmp_path / "run" / version / "events.out.tfevents.1.host").write_bytes(b"")
    (tmp_path / "run" / "version_10" / "hparams.yaml").write_text("{}")  # no events: ignored
    assert plot_curves.latest_runs(tmp_path) == {"run": tmp_path / "run" / "version_2"}


def test_latest_runs_says_what_to_run_when_empty(tmp_path):
    plot_curves = load_example("plot_curves")
    with pytest.raises(ValueError, match=r"vae_memorization\.py --out DIR"):
        plot_curves.latest_runs(tmp_path)
