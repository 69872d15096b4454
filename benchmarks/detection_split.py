"""Split-half thresholds and time to detection for ``benchmarks/detection.py``.

Each one-threshold rule (``detection_rules.tunables``) gets its threshold from the runs of the
even seeds (the tuning half: ``detection_stats.choose_threshold``, admissible with no false
alarm), once for all classes together (pooled) and once per class; its rates are then reported
on the odd seeds (the evaluation half), with exact 95 % bounds, beside its rates on the tuning
half, so that a threshold fitted to its own runs shows as such. Every false alarm of the
evaluation half is listed with its class, seed, epoch and ground truth.

Time to detection, on the evaluation half at the pooled threshold: the epoch the rule fires at
and its wall time (training and monitors since the start of the fit), against the epoch of the
best held-out loss and, for the classes with a copy-share ground truth, against the generator
step at which the share of near-copies first exceeds 10 %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from detection_classes import COPY_SHARE, ModelClass
from detection_rules import Rule, Tunable, tunables
from detection_stats import Counts, choose_threshold, rate
from detection_tables import Run, applies, best_epoch, fired, runs_of, spread, truth_at


def halves(results: Sequence[Run]) -> tuple[list[Run], list[Run]]:
    """(even seeds, odd seeds)."""
    return [r for r in results if r["seed"] % 2 == 0], [r for r in results if r["seed"] % 2]


def counts(rule: Rule, runs: Sequence[Run], names: Sequence[str]) -> Counts:
    """Detected / memorizing and false alarms / generalizing runs of the classes ``names``."""
    mem = [r for n in names for r in runs_of(runs, n, "memorize")]
    gen = [r for n in names for r in runs_of(runs, n, "generalize")]
    detected = sum(fired(rule, r) is not None for r in mem)
    alarms = sum(fired(rule, r) is not None for r in gen)
    return Counts(detected, len(mem), alarms, len(gen))


def applicable(tunable: Tunable, results: Sequence[Run], classes: dict[str, ModelClass]) -> list:
    rule = tunable.make(tunable.default)
    return [n for n in classes if applies(rule, [r for r in results if r["model_class"] == n])]


def chosen(tunable: Tunable, tuning: Sequence[Run], names: Sequence[str]) -> float:
    grid = tunable.grid
    return choose_threshold(grid, [counts(tunable.make(t), tuning, names) for t in grid])


def _rates(c: Counts) -> str:
    return f"{rate(c.detected, c.memorizing, False)}, {rate(c.alarms, c.generalizing, True)}"


def split_table(results: Sequence[Run], classes: dict[str, ModelClass]) -> tuple[str, dict]:
    """The split-half table and ``{tunable name: pooled threshold}``."""
    tuning, evaluation = halves(results)
    lines = [
        "| rule | scope | t (tuned on even seeds) | tuning half det, FA | evaluation half (odd "
        "seeds) det, FA | per class on the evaluation half (det, FA) |",
        "|---|---|---:|---|---|---|",
    ]
    thresholds = {}
    for tunable in tunables():
        names = applicable(tunable, results, classes)
        if not names:
            continue
        t = chosen(tunable, tuning, names)
        thresholds[tunable.name] = t
        rule = tunable.make(t)
        per_class = "; ".join(f"{n} {_short(counts(rule, evaluation, [n]))}" for n in names)
        lines.append(
            f"| {tunable.name} | pooled ({', '.join(names)}) | {t:g} | "
            f"{_rates(counts(rule, tuning, names))} | {_rates(counts(rule, evaluation, names))} "
            f"| {per_class} |"
        )
        for name in names:
            t_class = chosen(tunable, tuning, [name])
            rule = tunable.make(t_class)
            lines.append(
                f"| {tunable.name} | {name} only | {t_class:g} | "
                f"{_rates(counts(rule, tuning, [name]))} | "
                f"{_rates(counts(rule, evaluation, [name]))} | |"
            )
    return "\n".join(lines), thresholds


def _short(c: Counts) -> str:
    return f"{c.detected}/{c.memorizing}, {c.alarms}/{c.generalizing}"


def alarms(
    results: Sequence[Run], classes: dict[str, ModelClass], thresholds: dict[str, float]
) -> list[str]:
    """Every false alarm of each tuned rule at its pooled threshold, on every seed."""
    out = []
    for tunable in tunables():
        if tunable.name not in thresholds:
            continue
        rule = tunable.make(thresholds[tunable.name])
        for run in results:
            if run["kind"] == "memorize" or (epoch := fired(rule, run)) is None:
                continue
            model_class = classes[run["model_class"]]
            truth = truth_at(run, epoch, model_class.truth_key)
            half = "tuning" if run["seed"] % 2 == 0 else "evaluation"
            out.append(
                f"- {rule.name}: {run['model_class']} {run['kind']} seed {run['seed']} ({half} "
                f"half) at epoch {epoch}, {model_class.truth_key} {truth:.3g} there"
            )
    return out


def _at(run: Run, epoch: int | None, field: str) -> float:
    for record in run["epochs"]:
        if record["epoch"] == epoch:
            return float(record[field])
    return math.nan


def copy_epoch(run: Run, key: str) -> int | None:
    """The first epoch whose copy share exceeds :data:`COPY_SHARE`."""
    return next((e["epoch"] for e in run["epochs"] if e["truth"].get(key, 0) > COPY_SHARE), None)


def timing_table(
    results: Sequence[Run], classes: dict[str, ModelClass], thresholds: dict[str, float]
) -> str:
    """Time to detection on the evaluation half (median [range] over its detected runs)."""
    _, evaluation = halves(results)
    lines = [
        "| rule | class | detected | fire epoch | best val epoch | fire - best (epochs) | fire "
        "(s) | best val (s) | ground truth at fire | copy > 10 % (step) | fire - copy (steps) |",
        "|---|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for tunable in tunables():
        if tunable.name not in thresholds:
            continue
        rule = tunable.make(thresholds[tunable.name])
        for name, model_class in classes.items():
            runs = runs_of(evaluation, name, "memorize")
            if not runs or not applies(rule, runs):
                continue
            hits = [(r, fired(rule, r)) for r in runs if fired(rule, r) is not None]
            best = [(r, best_epoch(r)) for r, _ in hits]
            row: list[Any] = [
                rule.name,
                name,
                f"{len(hits)}/{len(runs)}",
                spread([e for _, e in hits], "g"),
                spread([b for _, b in best if b is not None], "g"),
                spread([e - b for (_, e), (_, b) in zip(hits, best, strict=True) if b is not None]),
                spread([_at(r, e, "seconds") for r, e in hits], ".0f"),
                spread([_at(r, b, "seconds") for r, b in best if b is not None], ".0f"),
                spread([truth_at(r, e, model_class.truth_key) for r, e in hits], ".3g"),
            ]
            row += _copy_cells(runs, hits, model_class.copy_key)
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def _copy_cells(runs: list[Run], hits: list[tuple[Run, int]], key: str | None) -> list[str]:
    """The step the copy share passes 10 % in every memorizing run (and how many never do),
    and the detected runs' firing step minus it."""
    if key is None:
        return ["n/a", "n/a"]
    steps = {}
    for run in runs:
        copied = copy_epoch(run, key)
        if copied is not None:
            steps[id(run)] = _at(run, copied, "batches")
    delays = [_at(r, e, "batches") - steps[id(r)] for r, e in hits if id(r) in steps]
    never = len(runs) - len(steps)
    return [
        spread(list(steps.values()), ".0f") + (f", never {never}" if never else ""),
        spread(delays, "+.0f"),
    ]
