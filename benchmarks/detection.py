"""How often each memwatch key and rule is right: detection, false alarms and how early it fires.

    python benchmarks/detection.py               # train every run, cache it, print the tables
    python benchmarks/detection.py --from-cache  # the tables again from the cache, no training
    python benchmarks/detection.py --fast        # a seconds-long smoke run (the tests use it)

Runs (``benchmarks/detection_runs.py``): for each of ``--seeds`` seeds and each model class
(the demo's MLP VAE, a conv VAE on digits upsampled to 28 x 28, a GLO without encoder), one
memorizing run on 32 digits and one generalizing run on 1,400, the same 256 held-out digits; the
seed sets the split, the model's initialisation, the training shuffle and the monitors' probes.
Every monitor at its defaults except ``probe_size=32``, ``every_n_epochs`` (about 10 checks a
run) and ``max_overhead`` (``--budgets``: ``inf``, every check on the whole probe, and the
default ``0.05``). Each run is cached as JSON under ``--out`` (gitignored ``outputs/``): per
check, the logged ``memwatch/`` scalars and the per-sample train / val values of every
descriptor; the rules (``benchmarks/detection_rules.py``) are evaluated on the cache.

Printed per rule and model class: detection (memorizing runs where the rule fired at any
check), false alarms (generalizing runs where it fired at any check), and the detection epoch
minus the epoch of the run's best validation loss (median and range over the detected runs;
the GLO's validation loss is the held-out probe's median recovery error at the checks).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

import detection_runs
from detection_runs import CLASSES, KINDS, LONG, LONG_CLASSES
from detection_tables import evaluate, margins, runs_summary, table
from digits_vae import quiet

OUT = Path("outputs/detection")


def cache_path(
    out: Path, budget: float, model_class: str, kind: str, seed: int, radii: str | None = None
) -> Path:
    folder = f"budget_{budget:g}" + ("" if radii is None else f"_radii_{radii}")
    return out / folder / f"{model_class}_{kind}_{seed}.json"


def parse_radii(text: str | None) -> Any:
    """``--radii``: ``None`` (the default), ``auto``, or comma-separated floats."""
    if text is None or text == "auto":
        return text
    return tuple(float(r) for r in text.split(","))


def borrow_val_loss(run: dict[str, Any], args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """A ``--geometry-only`` GLO run has no held-out recovery error (its validation loss): take
    it from the same seed's run with every monitor, trained identically (the monitors leave the
    global RNG alone), when that run is cached."""
    if any(v is not None and math.isfinite(v) for v in run["val_loss"]):
        return run
    budget = run["budget"]
    full = cache_path(args.out, budget, run["model_class"], run["kind"], run["seed"])
    if full != path and full.exists():
        run = {**run, "val_loss": json.loads(full.read_text())["val_loss"]}
    return run


def collect(args: argparse.Namespace, budget: float) -> list[dict[str, Any]]:
    """Every run at ``budget``: read from the cache, trained (and cached) when missing."""
    results = []
    plan = [(c, k) for c in CLASSES for k in KINDS]
    if args.long:
        plan += [(c, LONG) for c in LONG_CLASSES]
    for seed in range(args.seeds):
        for model_class, kind in plan:
            path = cache_path(args.out, budget, model_class, kind, seed, args.radii)
            if path.exists() and not args.fast:
                results.append(borrow_val_loss(json.loads(path.read_text()), args, path))
                continue
            if args.from_cache:
                raise SystemExit(f"--from-cache: {path} is missing; run without --from-cache")
            with quiet(args.threads):
                run = detection_runs.train(
                    model_class,
                    kind,
                    seed,
                    budget,
                    args.fast,
                    parse_radii(args.radii),
                    args.geometry_only,
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(run))
            run = borrow_val_loss(run, args, path)
            print(
                f"  trained {model_class} {kind} seed {seed} (budget {budget:g}): "
                f"{run['seconds']:.0f} s, {len(run['checks'])} checks",
                flush=True,
            )
            results.append(run)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--from-cache", action="store_true", help="read every run from --out")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per class and kind")
    parser.add_argument(
        "--budgets", default="inf,0.05", help="max_overhead values, comma-separated"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="cache folder")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--family", default=None, help="print only rules of this family")
    parser.add_argument(
        "--long", action="store_true", help="add generalizing runs 3x longer (mlp, glo)"
    )
    parser.add_argument("--radii", default=None, help="decay radii: auto or r1,r2 (cached apart)")
    parser.add_argument(
        "--geometry-only", action="store_true", help="GeometryMonitor alone (with --radii)"
    )
    args = parser.parse_args(argv)
    if args.fast:
        args.seeds, args.budgets = min(args.seeds, 1), args.budgets.split(",")[0]
    budgets = [float(b) for b in args.budgets.split(",")]
    start = time.perf_counter()
    out: dict[str, Any] = {}
    for budget in budgets:
        results = collect(args, budget)
        rows = evaluate(results)
        if args.family:
            rows = [r for r in rows if r["family"] == args.family]
        trained = sum(r["seconds"] for r in results)
        print(
            f"\nmax_overhead={budget:g}: {args.seeds} seeds x {len(CLASSES)} classes x "
            f"(memorize, generalize); training with the monitors {trained:.0f} s in all "
            f"(cached runs count their own time)\n"
        )
        print(runs_summary(results) + "\n")
        print(table(rows))
        print(
            "\nEffect margins (sign x bound: the rule 'bound past t' fires when this exceeds t):\n"
        )
        print(margins(results))
        out[f"{budget:g}"] = rows
    print(f"\n{time.perf_counter() - start:.0f} s for this invocation")
    if args.fast:
        print("--fast: a smoke run, too short for any run to memorize; the rates mean nothing.")
    return out


if __name__ == "__main__":
    main()
