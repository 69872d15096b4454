"""``examples/plot_curves.py``: the PNG of the demo's curves, from the --fast run's event files."""

from __future__ import annotations

import shlex
import shutil

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


def test_the_command_the_demo_prints_draws_its_two_runs(demo_fast, tmp_path, monkeypatch):
    plot_curves = load_example("plot_curves")
    line = next(ln for ln in demo_fast.stdout.splitlines() if ln.startswith("Figure: "))
    argv = shlex.split(line.removeprefix("Figure: "))
    assert argv[:2] == ["python", "examples/plot_curves.py"]
    drawn = {}
    real_plot = plot_curves.plot
    monkeypatch.setattr(
        plot_curves,
        "plot",
        lambda runs, out, source="": drawn.update(runs) or real_plot(runs, out, source),
    )
    out = plot_curves.main([*argv[2:], "--out", str(tmp_path / "c.png")])
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert [str(path) for path in drawn.values()] == [
        demo_fast.results["A"]["log_dir"],
        demo_fast.results["B"]["log_dir"],
    ]


def test_default_draws_the_demo_runs_only_into_outputs(demo_fast, tmp_path, monkeypatch):
    """Another run under the log folder is left out; the PNG goes under ``outputs/`` of the
    working directory, not into ``docs/``."""
    plot_curves = load_example("plot_curves")
    logdir = tmp_path / "logs"
    shutil.copytree(demo_fast.out, logdir)
    other = logdir / "C_other" / "version_0"
    other.mkdir(parents=True)
    shutil.copy(next((logdir / "A_32_digits").glob("version_*/events.out.tfevents.*")), other)
    assert set(plot_curves.latest_runs(logdir)) == {"A_32_digits", "B_1400_digits", "C_other"}
    drawn = {}
    monkeypatch.setattr(plot_curves, "plot", lambda runs, out, source="": drawn.update(runs) or out)
    monkeypatch.chdir(tmp_path)
    out = plot_curves.main(["--logdir", str(logdir)])
    assert out == plot_curves.Path("outputs/vae_memorization_curves.png")
    assert list(drawn) == list(plot_curves.DEMO_RUNS)
    drawn.clear()
    plot_curves.main(["--logdir", str(logdir), "--runs", "C_other"])
    assert list(drawn) == ["C_other"]


def test_select_runs_takes_version_directories_and_names_the_unknown_run(demo_fast, tmp_path):
    plot_curves = load_example("plot_curves")
    a_dir = demo_fast.results["A"]["log_dir"]
    selected = plot_curves.select_runs(demo_fast.out, [a_dir, "B_1400_digits"])
    assert selected == {
        "A_32_digits": plot_curves.Path(a_dir),
        "B_1400_digits": plot_curves.Path(demo_fast.results["B"]["log_dir"]),
    }
    logdir = tmp_path / "logs"
    shutil.copytree(demo_fast.out, logdir)
    first = next((logdir / "A_32_digits").glob("version_*"))
    shutil.copytree(first, logdir / "A_32_digits" / "version_99")
    twice = plot_curves.select_runs(logdir, [str(first), "A_32_digits"])  # two versions of A
    assert twice == {
        f"A_32_digits/{first.name}": first,
        "A_32_digits/version_99": logdir / "A_32_digits" / "version_99",
    }
    with pytest.raises(ValueError, match=r"got 'C_other': .* holds A_32_digits, B_1400_digits"):
        plot_curves.select_runs(demo_fast.out, ["C_other"])
