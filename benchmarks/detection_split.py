"""Split-half thresholds and time to detection for ``benchmarks/detection.py``.

Each one-threshold rule (``detection_rules.tunables``) gets its threshold from the runs of the
even seeds (the tuning half: ``detection_stats.choose_threshold``, admissible with no false
alarm), once for all classes together (pooled) and once per class; its rates are then reported
on the odd seeds (the evaluation half), with exact 95 % bounds, beside its rates on the tuning
half, so that a threshold fitted to its own runs shows as such. Every false alarm of the
evaluation half is listed with its class, seed, epoch and ground truth.

Time to detection, at the pooled threshold on the evaluation half and at the rule's default
threshold (set before these runs) on every seed: the epoch the rule fires at
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


def all_tunables(classes: dict[str, ModelClass]) -> list[Tunable]:
    """The common one-threshold rules, then each class's own (once)."""
    out = tunables()
    for model_class in classes.values():
        out += [t for t in model_class.tunables() if t.name not in {u.name for u in out}]
    return out


def split_table(results: Sequence[Run], classes: dict[str, ModelClass]) -> tuple[str, dict]:
    """The split-half table and ``{tunable name: pooled threshold}``. Rows per rule: the
    threshold tuned on the even seeds of every class it applies to (rates on both halves, and
    per class on the odd seeds); tuned per class; and the rule's default threshold (fixed
    before these runs) on every seed."""
    tuning, evaluation = halves(results)
    lines = [
        "| rule | scope | t | tuning half (even seeds) det, FA | evaluation half (odd seeds) "
        "det, FA | per class (det, FA) |",
        "|---|---|---:|---|---|---|",
    ]
    thresholds = {}
    for tunable in all_tunables(classes):
        names = applicable(tunable, results, classes)
        if not names:
            continue
        t = chosen(tunable, tuning, names)
        thresholds[tunable.name] = t
        rule = tunable.make(t)
        per_class = "; ".join(f"{n} {_rates(counts(rule, evaluation, [n]))}" for n in names)
        lines.append(
            f"| {tunable.name} | pooled ({', '.join(names)}), t tuned | {t:g} | "
            f"{_rates(counts(rule, tuning, names))} | {_rates(counts(rule, evaluation, names))} "
            f"| odd seeds: {per_class} |"
        )
        for name in names:
            t_class = chosen(tunable, tuning, [name])
            rule = tunable.make(t_class)
            lines.append(
                f"| {tunable.name} | {name} only, t tuned | {t_class:g} | "
                f"{_rates(counts(rule, tuning, [name]))} | "
                f"{_rates(counts(rule, evaluation, [name]))} | |"
            )
        rule = tunable.make(tunable.default)
        per_class = "; ".join(f"{n} {_rates(counts(rule, results, [n]))}" for n in names)
        lines.append(
            f"| {tunable.name} | pooled, default t (set before these runs) | "
            f"{tunable.default:g} | {_rates(counts(rule, tuning, names))} | "
            f"{_rates(counts(rule, evaluation, names))} | every seed: all "
            f"{_rates(counts(rule, results, names))}; {per_class} |"
        )
    return "\n".join(lines), thresholds


def alarms(
    results: Sequence[Run], classes: dict[str, ModelClass], thresholds: dict[str, float]
) -> list[str]:
    """Every false alarm, on every seed, of each one-threshold rule at its pooled threshold and
    at its default threshold (once where the two are the same)."""
    out = []
    rules = {}
    for tunable in all_tunables(classes):
        if tunable.name in thresholds:
            for t in (thresholds[tunable.name], tunable.default):
                rules.setdefault(tunable.make(t).name, tunable.make(t))
    for rule in rules.values():
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
    """Time to detection (median [range] over the detected runs): at the tuned threshold on
    the evaluation half, and at the default threshold (set before these runs) on every seed."""
    _, evaluation = halves(results)
    lines = [
        "| rule | runs | class | detected | fire epoch | best val epoch | fire - best (epochs) | "
        "fire (s) | best val (s) | ground truth at fire | copy > 10 % (step) | fire - copy "
        "(steps) |",
        "|---|---|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for tunable in all_tunables(classes):
        if tunable.name not in thresholds:
            continue
        plans = [(tunable.make(thresholds[tunable.name]), "tuned t, odd seeds", evaluation)]
        plans.append((tunable.make(tunable.default), "default t, every seed", results))
        for rule, label, pool in plans:
            for name, model_class in classes.items():
                runs = runs_of(pool, name, "memorize")
                if runs and applies(rule, runs):
                    lines.append(_timing_row(rule.name, label, name, model_class, runs, rule))
    return "\n".join(lines)


def _timing_row(
    rule_name: str, label: str, name: str, model_class: ModelClass, runs: list[Run], rule: Rule
) -> str:
    hits = [(r, fired(rule, r)) for r in runs if fired(rule, r) is not None]
    best = [(r, best_epoch(r)) for r, _ in hits]
    row: list[Any] = [
        rule_name,
        label,
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
    return "| " + " | ".join(str(c) for c in row) + " |"


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
