"""How often each memwatch key and rule is right: detection, false alarms and how early it fires.

    python benchmarks/detection.py --budgets inf --long --gan-probes 32,64,128  # the full table
    python benchmarks/detection.py --from-cache ...  # the tables again from the cache
    python benchmarks/detection.py --classes gan     # one class (trains what the cache lacks)
    python benchmarks/detection.py --fast            # a seconds-long smoke run (the tests)

Runs: for each of ``--seeds`` seeds (default 12: 0-11) and each model class of the registry
(``detection_classes.py``: mlp VAE, conv VAE, GLO, GAN without encoder, DDPM; one module per
class), one memorizing run on 32 digits and one generalizing run on 1,400, the same 256 held-out
digits; the seed sets the split, the model's initialisation, the training shuffle and the
monitors' probes. Monitors at their defaults except ``probe_size=32``, ``every_n_epochs`` (about
10 checks a run, 5 for conv) and ``max_overhead`` (``--budgets``). Each run is cached as JSON
under ``--out`` (gitignored ``outputs/``) as soon as it is trained, so an interrupted invocation
resumes where it stopped: per epoch its generator steps, wall time, held-out loss and
independent ground truth (``detection_truth.py``: no memwatch code), per check the logged
``memwatch/`` scalars and per-sample values; the rules (``detection_rules.py``) are evaluated
on the cache.

Printed: the runs with their ground truth at the first and last check; per rule and class,
detection and false alarms over every seed with exact 95 % Clopper-Pearson bounds
(``detection_stats.py``); the one-threshold rules with their threshold chosen on the even seeds
and their rates on the odd seeds, every false alarm listed (``detection_split.py``); the time
to detection on the odd seeds, in epochs, seconds and generator steps against the best
validation epoch and the step at which the copy share passes 10 %; with ``--gan-probes``, the
GAN's recovery, psi and C_T keys by probe size (``detection_probes.py``).

Runtime (2 CPU cores shared with other jobs; per run, training with the monitors at
``max_overhead=inf``): see ``docs/detection.md``, which holds the measured tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

import detection_runs
from detection_classes import KINDS, PROBE, ModelClass, Options, load
from detection_probes import probe_table
from detection_split import alarms, split_table, timing_table
from detection_tables import evaluate, margins, runs_summary, table
from digits_vae import quiet

OUT = Path("outputs/detection")


def cache_path(
    out: Path,
    budget: float,
    name: str,
    kind: str,
    seed: int,
    radii: str | None = None,
    probe: int = PROBE,
) -> Path:
    folder = f"budget_{budget:g}" + ("" if radii is None else f"_radii_{radii}")
    suffix = "" if probe == PROBE else f"_probe{probe}"
    return out / folder / f"{name}_{kind}_{seed}{suffix}.json"


def parse_radii(text: str | None) -> Any:
    """``--radii``: ``None`` (the default), ``auto``, or comma-separated floats."""
    if text is None or text == "auto":
        return text
    return tuple(float(r) for r in text.split(","))


def run_one(
    args: argparse.Namespace, model_class: ModelClass, kind: str, options: Options
) -> dict[str, Any]:
    """A run from the cache, or trained (and cached) when missing or of an older version."""
    path = cache_path(
        args.out, options.budget, model_class.name, kind, options.seed, args.radii, options.probe
    )
    if path.exists() and not args.fast:
        run = json.loads(path.read_text())
        if run.get("version") == detection_runs.VERSION:
            return run
    if args.from_cache:
        raise SystemExit(f"--from-cache: {path} is missing or stale; run without --from-cache")
    with quiet(args.threads):
        run = detection_runs.train(model_class, kind, options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run))
    print(
        f"  trained {model_class.name} {kind} seed {options.seed} probe {options.probe} "
        f"(budget {options.budget:g}): {run['seconds']:.0f} s, {len(run['checks'])} checks, "
        f"ground truth {run['truth_seconds']:.0f} s",
        flush=True,
    )
    return run


def collect(
    args: argparse.Namespace, classes: dict[str, ModelClass], budget: float, probe: int = PROBE
) -> list[dict[str, Any]]:
    """Every run at ``budget`` (seed-major, so an interrupted run leaves whole seeds); at a
    probe other than the default, the GAN's generalizing runs only."""
    results = []
    radii = parse_radii(args.radii)
    for seed in range(args.seeds):
        for model_class in classes.values():
            kinds = list(KINDS) + (list(model_class.long_kinds) if args.long else [])
            if probe != PROBE:
                kinds = ["generalize"]
            for kind in kinds:
                options = Options(budget, seed, args.fast, probe, radii, args.geometry_only)
                results.append(run_one(args, model_class, kind, options))
    return results


def report(args: argparse.Namespace, classes: dict[str, ModelClass], budget: float) -> list:
    results = collect(args, classes, budget)
    rows = evaluate(results, classes)
    shown = [r for r in rows if args.family is None or r["family"] == args.family]
    per_class = ", ".join(
        f"{n} {sum(r['seconds'] for r in results if r['model_class'] == n):.0f} s" for n in classes
    )
    print(
        f"\nmax_overhead={budget:g}: seeds 0-{args.seeds - 1} x {len(classes)} classes x "
        f"(memorize, generalize); training with the monitors, all runs of a class: {per_class}\n"
    )
    print(runs_summary(results, classes) + "\n")
    print("Every rule, every seed (det, FA per class; pooled with exact one-sided 95 % bounds):\n")
    print(table(shown, classes))
    split, thresholds = split_table(results, classes)
    print("\nOne-threshold rules: t chosen on the even seeds, rates on the odd seeds:\n")
    print(split)
    print("\nFalse alarms of the one-threshold rules at their pooled and default t (every seed):")
    print("\n".join(alarms(results, classes, thresholds)) or "- none")
    print("\nTime to detection (median [range] over the detected runs; seconds: training and")
    print("monitors since the start of the fit, ground truth left out):\n")
    print(timing_table(results, classes, thresholds))
    print("\nEffect margins (sign x bound: the rule 'bound past t' fires when this exceeds t):\n")
    print(margins(results, classes))
    probes = [int(p) for p in args.gan_probes.split(",")] if args.gan_probes else []
    if "gan" in classes and probes:
        gan = {"gan": classes["gan"]}
        by_probe = {
            p: [
                r
                for r in (results if p == PROBE else collect(args, gan, budget, p))
                if r["model_class"] == "gan" and r["kind"] == "generalize"
            ]
            for p in probes
        }
        memorizing = [r for r in results if r["model_class"] == "gan" and r["kind"] == "memorize"]
        print("\nGAN without encoder, by probe size of the generalizing runs:\n")
        print(probe_table(memorizing, by_probe))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--from-cache", action="store_true", help="read every run from --out")
    parser.add_argument("--seeds", type=int, default=12, help="seeds 0..N-1 per class and kind")
    parser.add_argument(
        "--budgets", default="inf,0.05", help="max_overhead values, comma-separated"
    )
    parser.add_argument("--classes", default=None, help="comma-separated subset of the classes")
    parser.add_argument("--out", type=Path, default=OUT, help="cache folder")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--family", default=None, help="print only rules of this family")
    parser.add_argument("--long", action="store_true", help="add generalizing runs 3x, 9x longer")
    parser.add_argument("--radii", default=None, help="decay radii: auto or r1,r2 (cached apart)")
    parser.add_argument("--geometry-only", action="store_true", help="GeometryMonitor alone")
    parser.add_argument(
        "--gan-probes", default=None, help="probe sizes of the GAN table, e.g. 32,64,128"
    )
    args = parser.parse_args(argv)
    classes = load()
    if args.classes:
        wanted = args.classes.split(",")
        unknown = sorted(set(wanted) - set(classes))
        if unknown:
            raise SystemExit(f"--classes: unknown {unknown}; known: {sorted(classes)}")
        classes = {n: c for n, c in classes.items() if n in wanted}
    if args.fast:
        args.seeds, args.budgets = min(args.seeds, 2), args.budgets.split(",")[0]
    start = time.perf_counter()
    out = {f"{float(b):g}": report(args, classes, float(b)) for b in args.budgets.split(",")}
    print(f"\n{time.perf_counter() - start:.0f} s for this invocation")
    if args.fast:
        print("--fast: a smoke run, too short for any run to memorize; the rates mean nothing.")
    return out


if __name__ == "__main__":
    main()
