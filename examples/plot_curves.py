"""Draw the demo's TensorBoard curves, run A against run B, as one PNG.

    python examples/vae_memorization.py      # writes outputs/memwatch_logs/
    python examples/plot_curves.py           # -> outputs/vae_memorization_curves.png
    python examples/plot_curves.py --runs outputs/memwatch_logs/A_32_digits/version_3 ...
    python examples/plot_curves.py --logdir DIR --runs A_32_digits --out FILE

Draws the runs of one demo invocation: by default the newest ``version_N`` of the demo's runs
``A_32_digits`` and ``B_1400_digits`` under ``--logdir`` (the demo prints the exact
``--runs`` of its invocation at the end); ``--runs`` takes other run names under ``--logdir`` or
version directories. The PNG goes to ``--out`` (default ``outputs/vae_memorization_curves.png``,
in the gitignored ``outputs/``; the figure in ``docs/`` is only rewritten when passed as
``--out``).

Reads the scalar event files that Lightning's ``TensorBoardLogger`` wrote with TensorBoard's
``EventAccumulator``, and plots over training steps (the step Lightning gives the scalars):
dip and decay (Feiszli (2017), sec. 5.3: positive dip and negative decay mean memorization),
the psi gap (train - val of ``memwatch/spectrum/log_volume``, Humayun et al. (2024), eq. 2),
the MRE-gap and the KS p-value of the recovery errors (Webster et al. (2019), eq. 5, sec. 3.3;
dotted: the 0.10 and 0.01 lines), and the validation loss.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

#: (panel title, [(tag, line style label)], y-axis log scale, reference line)
PANELS: tuple[tuple[str, tuple[tuple[str, str], ...], bool, float | None], ...] = (
    (
        "dip (> 0: memorization)",
        (("memwatch/density/dip/train", "train"), ("memwatch/density/dip/val", "val")),
        False,
        0.0,
    ),
    (
        "decay (< 0: memorization)",
        (("memwatch/density/decay/train", "train"), ("memwatch/density/decay/val", "val")),
        False,
        0.0,
    ),
    ("psi gap, train - val", (("memwatch/spectrum/log_volume/gap", ""),), False, 0.0),
    ("MRE-gap (> 0.10: overfitting)", (("memwatch/recovery/mre_gap", ""),), False, 0.10),
    ("recovery KS p (< 0.01: overfitting)", (("memwatch/recovery/ks_pvalue", ""),), True, 0.01),
    ("validation loss (neg. ELBO)", (("val_loss", ""),), False, None),
)

_VERSION = re.compile(r"version_(\d+)$")

#: The demo's runs (``examples/vae_memorization.py``), drawn by default.
DEMO_RUNS = ("A_32_digits", "B_1400_digits")


def latest_runs(logdir: Path) -> dict[str, Path]:
    """``{run name: newest version directory}`` for every run directory under ``logdir``.

    A run directory holds ``version_N`` directories with TensorBoard event files (Lightning's
    ``TensorBoardLogger(save_dir=logdir, name=run)``); the largest ``N`` with events is taken.

    Raises:
        ValueError: when ``logdir`` holds no such run.
    """
    runs: dict[str, tuple[int, Path]] = {}
    for events in Path(logdir).glob("*/version_*/events.out.tfevents.*"):
        version_dir = events.parent
        match = _VERSION.search(version_dir.name)
        if match is None:
            continue
        name, number = version_dir.parent.name, int(match.group(1))
        if name not in runs or number > runs[name][0]:
            runs[name] = (number, version_dir)
    if not runs:
        raise ValueError(
            f"Expected TensorBoard runs `<run>/version_N/events.out.tfevents.*` under {logdir} but"
            " found none: run `python examples/vae_memorization.py --out DIR` first and pass that"
            " DIR as --logdir"
        )
    return {name: path for name, (_, path) in sorted(runs.items())}


def select_runs(logdir: Path, runs: list[str]) -> dict[str, Path]:
    """``{label: version directory}`` of ``runs``: each a version directory with event files,
    else a run name under ``logdir`` (its newest version). A label is the run's name, with its
    ``/version_N`` when two selected versions share the name.

    Raises:
        ValueError: naming a run that is neither, and the runs ``logdir`` holds.
    """
    selected: list[Path] = []
    available: dict[str, Path] | None = None
    for run in runs:
        path = Path(run)
        if path.is_dir() and any(path.glob("events.out.tfevents.*")):
            selected.append(path)
            continue
        if available is None:
            available = latest_runs(logdir)
        if run not in available:
            raise ValueError(
                f"Expected `--runs` to name version directories with event files or runs under"
                f" {logdir} but got {run!r}: {logdir} holds {', '.join(available)}"
            )
        selected.append(available[run])
    names = [path.parent.name for path in selected]
    unique = len(set(names)) == len(names)
    return {
        name if unique else f"{name}/{path.name}": path
        for name, path in zip(names, selected, strict=True)
    }


def read_scalars(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar tag of one run: ``{tag: (steps, values)}`` (all events kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: ([e.step for e in events], [e.value for e in events])
        for tag in accumulator.Tags()["scalars"]
        for events in [accumulator.Scalars(tag)]
    }


def plot(run_dirs: dict[str, Path], out: Path, source: str = "") -> Path:
    """Draw the panels for the runs ``{label: version directory}`` into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: read_scalars(path) for name, path in run_dirs.items()}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    colors = {name: f"C{i}" for i, name in enumerate(runs)}
    for ax, (title, tags, log_scale, reference) in zip(axes.flat, PANELS, strict=True):
        for name, scalars in runs.items():
            for (tag, label), style in zip(tags, ("-", "--"), strict=False):
                if tag not in scalars:
                    continue
                steps, values = scalars[tag]
                legend = f"{name} {label}".strip()
                ax.plot(steps, values, style, color=colors[name], marker=".", label=legend)
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle=":", linewidth=1)
        if log_scale:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.legend(fontsize="small")
    fig.suptitle(f"lightning_memwatch: {' vs '.join(runs)}" + (f" ({source})" if source else ""))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", type=Path, default=Path("outputs/memwatch_logs"))
    parser.add_argument(
        "--runs",
        nargs="+",
        default=list(DEMO_RUNS),
        help="run names under --logdir (newest version) or version directories",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/vae_memorization_curves.png"))
    args = parser.parse_args(argv)
    runs = select_runs(args.logdir, args.runs)
    source = f"from {args.logdir}" if all(r in DEMO_RUNS for r in args.runs) else ""
    out = plot(runs, args.out, source)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
