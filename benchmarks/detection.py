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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

import detection_rules
import detection_runs
from detection_runs import CLASSES, KINDS, LONG, LONG_CLASSES
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


def best_epoch(run: dict[str, Any]) -> int | None:
    finite = [(v, e) for e, v in enumerate(run["val_loss"]) if v is not None and math.isfinite(v)]
    return min(finite)[1] if finite else None


def _delays(fired: list[tuple[int | None, int | None]]) -> str:
    delays = [f - b for f, b in fired if f is not None and b is not None]
    if not delays:
        return "-"
    return f"{statistics.median(delays):+g} [{min(delays):+d}, {max(delays):+d}]"


def evaluate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule and model class: fired counts on memorizing / generalizing runs and delays."""
    rows = []
    for rule in detection_rules.rules():
        row: dict[str, Any] = {"rule": rule.name, "family": rule.family, "classes": {}}
        for model_class in CLASSES:
            cell = {}
            for kind in KINDS:
                runs = [r for r in results if r["model_class"] == model_class and r["kind"] == kind]
                fired = [
                    (detection_rules.fired_epoch(rule, r["checks"]), best_epoch(r)) for r in runs
                ]
                cell[kind] = (sum(f is not None for f, _ in fired), len(runs))
                if kind == "memorize":
                    cell["delay"] = _delays(fired)
            long_runs = [
                r for r in results if r["model_class"] == model_class and r["kind"] == LONG
            ]
            if long_runs:
                fired_long = [detection_rules.fired_epoch(rule, r["checks"]) for r in long_runs]
                cell[LONG] = (sum(f is not None for f in fired_long), len(long_runs))
            row["classes"][model_class] = cell
        rows.append(row)
    return rows


def _share(count: tuple[int, int]) -> str:
    return f"{count[0]}/{count[1]}"


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| rule | "
        + " | ".join(f"{c} det | {c} FA | {c} epoch - best" for c in CLASSES)
        + " | all det | all FA |"
    )
    long_classes = [c for c in CLASSES if rows and LONG in rows[0]["classes"][c]]
    if long_classes:
        header += f" 3x-long FA ({', '.join(long_classes)}) |"
    lines = [header, "|---|" + "---:|" * (3 * len(CLASSES) + 2 + bool(long_classes))]
    for row in rows:
        cells, det, fa = [], [0, 0], [0, 0]
        for model_class in CLASSES:
            cell = row["classes"][model_class]
            cells += [_share(cell["memorize"]), _share(cell["generalize"]), cell["delay"]]
            for total, kind in ((det, "memorize"), (fa, "generalize")):
                total[0] += cell[kind][0]
                total[1] += cell[kind][1]
        cells += [_share(tuple(det)), _share(tuple(fa))]
        if long_classes:
            cells.append(", ".join(_share(row["classes"][c][LONG]) for c in long_classes))
        lines.append(f"| {row['rule']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def margins(results: list[dict[str, Any]]) -> str:
    """How close each headline effect came to a margin: per class, the generalizing runs' most
    memorization-like bound over every check (a rule with a larger margin never fired on them)
    and the memorizing runs' least memorization-like bound at their first check."""
    lines = [
        "| descriptor (sign) | class | generalizing: closest bound, any check | "
        "memorizing: weakest bound at the first check |",
        "|---|---|---:|---:|",
    ]
    for descriptor in detection_rules.HEADLINE:
        sign = detection_rules.SIGNS[descriptor]
        for model_class in CLASSES:
            closest, weakest = [], []
            for run in results:
                if run["model_class"] != model_class or not run["checks"]:
                    continue
                bounds = []
                for check in run["checks"]:
                    _, lower, upper = detection_rules.effect(check, descriptor)
                    bounds.append(sign * (lower if sign > 0 else upper))
                finite = [b for b in bounds if math.isfinite(b)]
                if run["kind"] in ("generalize", LONG) and finite:
                    closest.append(max(finite))
                elif run["kind"] == "memorize" and math.isfinite(bounds[0]):
                    weakest.append(bounds[0])
            if closest or weakest:
                gen = f"{max(closest):+.2f}" if closest else "-"
                mem = f"{min(weakest):+.2f}" if weakest else "-"
                lines.append(f"| {descriptor} ({sign:+d}) | {model_class} | {gen} | {mem} |")
    return "\n".join(lines)


def runs_summary(results: list[dict[str, Any]]) -> str:
    lines = [
        "| class | kind | runs | best val epoch (each seed) | epochs | checks | seconds each | "
        "measurements per monitor (each seed) |"
    ]
    lines.append("|---|---|---:|---|---:|---:|---|---|")
    for model_class in CLASSES:
        for kind in (*KINDS, LONG):
            runs = [r for r in results if r["model_class"] == model_class and r["kind"] == kind]
            if not runs:
                continue
            best = ", ".join(str(best_epoch(r)) for r in runs)
            seconds = ", ".join(f"{r['seconds']:.0f}" for r in runs)
            names = sorted(runs[0]["measurements"])
            counts = "; ".join(
                f"{name.removesuffix('Monitor')} "
                + ",".join(str(r["measurements"].get(name, 0)) for r in runs)
                for name in names
            )
            lines.append(
                f"| {model_class} | {kind} | {len(runs)} | {best} | {runs[0]['plan']['epochs']} | "
                f"{len(runs[0]['checks'])} | {seconds} | {counts} |"
            )
    return "\n".join(lines)


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
