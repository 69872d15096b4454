"""Part 4 of ``benchmarks/overhead.py``: a whole-probe measurement, this code against 47f86a5.

The baseline is the package of commit :data:`BASELINE` (the code before the shared budget,
rolling probe and warm-started recovery), extracted with ``git archive`` into a temporary
directory; each code runs :mod:`probe_cost` in its own subprocess with ``PYTHONPATH`` at its
root (the worker prints the package it imported), the two alternating. Every epoch of those
fits measures all 64 + 64 probe samples (``max_overhead=inf``), so "every sample measured once"
is one measurement, and the model trains between two measurements.

What is compared, per measurement (the monitors' epoch-end hooks: families, artifacts,
logging):

- ``first``: epoch 0, a process's first measurement (one-off costs; the new code's cold
  recovery);
- ``per coverage``: the baseline costs the same every time (every recovery cold, every figure
  drawn), so its mean over the later epochs. The new code runs a 10-measurement cycle: a cold
  recovery every 5th visit of a sample and figures every 10th measurement. With 11 epochs its
  mean over measurements 1-10 is that cycle; with fewer, the cycle is estimated from its parts
  as ``(8 warm + cold + cold with figures) / 10``: ``warm`` the mean of the warm measurements,
  ``cold`` a warm one plus the recovery family's cold-minus-warm seconds, ``cold with figures``
  the first measurement (one-off costs included, so the estimate errs high). Both are printed
  where both exist.
- ``new, slices of 16``: what the budget chooses at the defaults (``MIN_PROBE`` = 16 rows per
  split), fixed: every sample measured once takes 4 measurements, and per coverage is 4 times
  the mean of measurements 1-20 (a whole cycle: a slice's cold restart every 20 measurements,
  figures every 10).

Agreement: per descriptor, the share of per-sample values (probe order, same epoch; both fits
train identically, checked through ``val_loss``) within 1% of the baseline's, at epoch 0 (both
cold) and at the later epochs (the new code warm-started), and the largest difference of the
logged train - val gaps, next to the probe's own sampling noise at 64 (issue 12: psi 0.17, dip
0.04, decay 0.16, MRE-gap 0.11 on the generalizing VAE).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "47f86a5"
#: Issue 12's targets: new / baseline cost of a whole-probe measurement.
TARGETS = {"vae": 0.3, "conv": 0.5}
LABELS = {"vae": "demo VAE (latent 8)", "conv": "conv VAE (latent 100 -> 1x28x28)"}
#: Sampling noise of each gap at probe 64 (issue 12), and the logged key of the gap.
GAPS = {
    "spectrum/log_volume": ("memwatch/spectrum/log_volume/gap", 0.17),
    "spectrum/local_rank": ("memwatch/spectrum/local_rank/gap", None),
    "spectrum/intrinsic_dim": ("memwatch/spectrum/intrinsic_dim/gap", None),
    "spectrum/log_condition": ("memwatch/spectrum/log_condition/gap", None),
    "density/dip": ("memwatch/density/dip/gap", 0.04),
    "density/decay": ("memwatch/density/decay/gap", 0.16),
    "recovery/errors": ("memwatch/recovery/mre_gap", 0.11),
}
CYCLE, RESTART_EVERY = 10, 5


def baseline_root(tmp: str) -> Path:
    """The baseline package extracted under ``tmp`` (``git archive`` of this repository)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BASELINE, "lightning_memwatch"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    return Path(tmp)


def run_worker(code: Path, run: Any, threads: int, seed: int) -> dict:
    """One :mod:`probe_cost` fit in a subprocess importing the package under ``code``."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": str(threads)}
        command = [
            sys.executable,
            str(ROOT / "benchmarks" / "probe_cost.py"),
            *("--model", run.model, "--epochs", str(run.epochs), "--probe-size", str(run.probe)),
            *("--slice", str(run.slice), "--threads", str(threads), "--seed", str(seed)),
            *("--json", out.name),
        ]
        done = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def per_measurement(result: dict) -> list[float]:
    """Seconds of each epoch's measurement: both monitors' hooks."""
    return [sum(pair) for pair in zip(*result["hook_seconds"].values(), strict=True)]


def family(result: dict, name: str) -> list[float]:
    return [e.get(f"memwatch/{name}/seconds", float("nan")) for e in result["scalars"]]


def coverage_cost(result: dict, new: bool) -> tuple[float, float | None]:
    """``(per coverage, direct cycle mean or None)``; see the module docstring."""
    seconds = per_measurement(result)
    if not new:
        return statistics.mean(seconds[1:] or seconds), None
    warm_epochs = [e for e in range(1, len(seconds)) if e % RESTART_EVERY]
    warm = statistics.mean(seconds[e] for e in warm_epochs)
    recovery = family(result, "recovery")
    cold_extra = recovery[0] - statistics.mean(recovery[e] for e in warm_epochs)
    estimate = ((CYCLE - 2) * warm + (warm + cold_extra) + seconds[0]) / CYCLE
    direct = statistics.mean(seconds[1 : CYCLE + 1]) if len(seconds) > CYCLE else None
    return estimate, direct


def within(new: list[float], old: list[float], rtol: float = 0.01) -> tuple[int, int]:
    """How many of the pairs agree to ``rtol`` (two non-finite values agree when equal or both
    NaN)."""
    agree = 0
    for a, b in zip(new, old, strict=True):
        if math.isfinite(a) and math.isfinite(b):
            agree += abs(a - b) <= rtol * abs(b) + 1e-12
        else:
            agree += a == b or (math.isnan(a) and math.isnan(b))
    return agree, len(old)


def agreement(new: dict, old: dict) -> list[str]:
    """Markdown rows: per descriptor, the share within 1% and the largest gap difference."""
    rows = []
    epochs = range(min(len(new["scalars"]), len(old["scalars"])))
    for key, (gap_key, noise) in GAPS.items():
        counts = {"first": [0, 0], "later": [0, 0]}
        for epoch in epochs:
            for split in ("train", "val"):
                a = new["samples"][key][split].get(str(epoch))
                b = old["samples"][key][split].get(str(epoch))
                if a is None or b is None:
                    continue
                agree, total = within(a, b)
                slot = counts["first" if epoch == 0 else "later"]
                slot[0], slot[1] = slot[0] + agree, slot[1] + total
        gaps = [
            abs(new["scalars"][e][gap_key] - old["scalars"][e][gap_key])
            for e in epochs
            if gap_key in new["scalars"][e] and gap_key in old["scalars"][e]
        ]
        shares = [f"{100 * a / n:.0f} %" if n else "-" for a, n in counts.values()]
        rows.append(
            f"| {key} | {shares[0]} | {shares[1]} | {max(gaps, default=float('nan')):.3g} | "
            f"{noise if noise is not None else '-'} |"
        )
    return rows


class Run(NamedTuple):
    """One worker fit: which code, model, epochs, probe size, slice (0: the whole probe)."""

    code: str
    model: str
    epochs: int
    probe: int
    slice: int = 0

    @property
    def label(self) -> str:
        if self.code == "old":
            return BASELINE
        return f"new, slices of {self.slice}" if self.slice else "new"


def plan(quick: bool) -> list[Run]:
    """The fits, in the order they run (the two codes alternate first place per model)."""
    if quick:
        return [
            Run("old", "vae", 2, 64),
            Run("new", "vae", 2, 64),
            Run("new", "vae", 5, 64, 16),
            Run("new", "conv", 2, 4),
            Run("old", "conv", 1, 4),
        ]
    return [
        Run("old", "vae", CYCLE + 1, 64),
        Run("new", "vae", CYCLE + 1, 64),
        # slices of 16: a sample's cold restart comes every 5 x 4 measurements
        Run("new", "vae", RESTART_EVERY * 4 + 1, 64, 16),
        Run("new", "conv", 3, 64),
        Run("old", "conv", 2, 64),
    ]


def slice_cost(result: dict, run: Run) -> tuple[float, float]:
    """``(first coverage, per coverage)`` of a sliced run: the first ``probe / slice``
    measurements, and ``probe / slice`` times the mean of the later ones (a whole cycle of cold
    restarts and figures with the full plan)."""
    seconds, per = per_measurement(result), run.probe // run.slice
    return sum(seconds[:per]), per * statistics.mean(seconds[1:])


def cost_row(run: Run, result: dict, old_cost: float) -> str:
    """A markdown row of the cost table; ``old_cost`` is the baseline's per coverage."""
    seconds = per_measurement(result)
    if run.slice:
        first, cost = slice_cost(result, run)
        shown, ratio = f"{cost:.2f}", cost
    else:
        first = seconds[0]
        cost, direct = coverage_cost(result, new=run.code == "new")
        shown = f"{cost:.2f}" + (f" (direct {direct:.2f})" if direct is not None else "")
        ratio = direct if direct is not None else cost
    last = result["scalars"][-1]
    parts = ", ".join(
        f"{f} {last[f'memwatch/{f}/seconds']:.2f}"
        for f in ("spectrum", "density", "recovery")
        if f"memwatch/{f}/seconds" in last
    )
    later = ", ".join(f"{s:.2f}" for s in seconds[1:])
    target = TARGETS[run.model] if run.code == "new" else ""
    return (
        f"| {LABELS[run.model]} | {run.label} | {first:.2f} | {later} | {shown} | "
        f"{ratio / old_cost:.3f} | {target} | {parts} |"
    )


def main(quick: bool = False, threads: int = 1, seed: int = 0) -> list[tuple[Run, dict]]:
    """Part 4: print the cost table and the agreement tables; return the raw results."""
    print(
        f"\n## Target 4: measuring every sample of a 64 + 64 probe once, against {BASELINE}\n",
        flush=True,
    )
    if quick:
        print("--quick: the conv VAE on a probe of 4 + 4; numbers are a smoke test")
    done: list[tuple[Run, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"old": baseline_root(tmp), "new": ROOT}
        for run in plan(quick):
            result = run_worker(codes[run.code], run, threads, seed)
            done.append((run, result))
            print(
                f"  {run.model}, {run.label} ({result['package']}): {run.epochs} epochs, "
                f"{result['fit_seconds']:.1f} s fit",
                flush=True,
            )
    print(
        "\n| model | code | first coverage (s) | later measurements (s) | per coverage (s) | "
        "ratio | target | seconds by family, last measurement |"
    )
    print("|---|---|---:|---|---:|---:|---:|---|")
    for model in LABELS:
        runs = [(run, result) for run, result in done if run.model == model]
        old = next(result for run, result in runs if run.code == "old")
        old_cost, _ = coverage_cost(old, new=False)
        for run, result in sorted(runs, key=lambda pair: (pair[0].code != "old", pair[0].slice)):
            print(cost_row(run, result, old_cost))
    for model in LABELS:
        whole = {run.code: result for run, result in done if run.model == model and not run.slice}
        same = all(
            a.get("val_loss") == b.get("val_loss")
            for a, b in zip(whole["new"]["scalars"], whole["old"]["scalars"], strict=False)
        )
        print(f"\nAgreement, {LABELS[model]} (val_loss per epoch identical in both fits: {same}):")
        print(
            "| descriptor | within 1%, epoch 0 | within 1%, later epochs | max gap diff | "
            "probe noise |"
        )
        print("|---|---:|---:|---:|---:|")
        print("\n".join(agreement(whole["new"], whole["old"])))
    return done
