"""The tables of ``benchmarks/detection.py`` over every rule: rates per class with exact
bounds, the runs themselves with their ground truth, and the effect margins."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import detection_rules
from detection_classes import KINDS, ModelClass
from detection_stats import rate

Run = dict[str, Any]


def runs_of(results: Sequence[Run], name: str, kind: str) -> list[Run]:
    return [r for r in results if r["model_class"] == name and r["kind"] == kind]


def best_epoch(run: Run) -> int | None:
    finite = [(v, e) for e, v in enumerate(run["val_loss"]) if v is not None and math.isfinite(v)]
    return min(finite)[1] if finite else None


def fired(rule: detection_rules.Rule, run: Run) -> int | None:
    """The epoch ``rule`` fires at in ``run`` (cached in the run by rule name)."""
    cache = run.setdefault("_fired", {})
    if rule.name not in cache:
        cache[rule.name] = detection_rules.fired_epoch(rule, run["checks"])
    return cache[rule.name]


def applies(rule: detection_rules.Rule, runs: Sequence[Run]) -> bool:
    """Whether the rule's condition is defined (not NaN) at some check of some run."""
    return any(math.isfinite(rule.condition(c, r["checks"][0])) for r in runs for c in r["checks"])


def spread(values: Sequence[float], fmt: str = "+g") -> str:
    """``median [min, max]``, ``-`` for none."""
    if not values:
        return "-"
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def all_rules(classes: dict[str, ModelClass]) -> list[detection_rules.Rule]:
    """The common rules, then each class's own (in class order, once)."""
    out = detection_rules.rules()
    names = {r.name for r in out}
    for model_class in classes.values():
        for rule in model_class.rules():
            if rule.name not in names:
                out.append(rule)
                names.add(rule.name)
    return out


def evaluate(
    results: Sequence[Run], classes: dict[str, ModelClass], rules: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """Per rule and class: (fired, runs) per kind, ``None`` where the rule does not apply;
    the detection epoch minus the best-validation epoch of the detected runs."""
    rows = []
    for rule in all_rules(classes) if rules is None else rules:
        row: dict[str, Any] = {"rule": rule.name, "family": rule.family, "classes": {}}
        for name, model_class in classes.items():
            cell: dict[str, Any] = {}
            runs = [r for r in results if r["model_class"] == name]
            usable = applies(rule, runs)
            for kind in (*KINDS, *model_class.long_kinds):
                kind_runs = runs_of(results, name, kind)
                if kind_runs:
                    count = sum(fired(rule, r) is not None for r in kind_runs)
                    cell[kind] = (count, len(kind_runs)) if usable else None
            delays = [
                fired(rule, r) - best_epoch(r)
                for r in runs_of(results, name, "memorize")
                if fired(rule, r) is not None and best_epoch(r) is not None
            ]
            cell["delay"] = spread(delays) if usable else "-"
            row["classes"][name] = cell
        rows.append(row)
    return rows


def _cell(count: tuple[int, int] | None) -> str:
    return "n/a" if count is None else f"{count[0]}/{count[1]}"


def table(rows: Sequence[dict[str, Any]], classes: dict[str, ModelClass]) -> str:
    """Per class ``det, FA`` and the detection epoch minus the best-validation epoch; pooled
    detection with its 95 % lower bound and false alarms with their 95 % upper bound over the
    classes the rule applies to; false alarms of the longer generalizing runs."""
    longs = sorted({k for c in classes.values() for k in c.long_kinds})
    header = "| rule | " + " | ".join(f"{c} det, FA | {c} epoch - best" for c in classes)
    header += " | all det | all FA |" + "".join(f" {k} FA |" for k in longs)
    lines = [header, "|---|" + "---:|" * (2 * len(classes) + 2 + len(longs))]
    for row in rows:
        cells, det, fa = [], [0, 0], [0, 0]
        for name in classes:
            cell = row["classes"][name]
            mem, gen = cell.get("memorize"), cell.get("generalize")
            cells += [f"{_cell(mem)}, {_cell(gen)}", cell["delay"]]
            for total, count in ((det, mem), (fa, gen)):
                if count is not None:
                    total[0], total[1] = total[0] + count[0], total[1] + count[1]
        cells += [rate(*det, upper=False), rate(*fa, upper=True)]
        for kind in longs:
            counts = [row["classes"][c].get(kind) for c in classes if kind in row["classes"][c]]
            cells.append(", ".join(_cell(c) for c in counts) or "-")
        lines.append(f"| {row['rule']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def margins(results: Sequence[Run], classes: dict[str, ModelClass]) -> str:
    """How close each effect of ``detection_rules.MARGIN_SIGNS`` came to a margin: per class,
    the generalizing runs' most memorization-like bound over every check (a rule with a larger
    margin never fired on them) and the memorizing runs' least memorization-like bound at their
    first check."""
    lines = [
        "| descriptor (sign) | class | generalizing: closest bound, any check | "
        "memorizing: weakest bound at the first check |",
        "|---|---|---:|---:|",
    ]
    for descriptor, sign in detection_rules.MARGIN_SIGNS.items():
        for name in classes:
            closest, weakest = [], []
            for run in results:
                if run["model_class"] != name or not run["checks"]:
                    continue
                bounds = []
                for check in run["checks"]:
                    _, lower, upper = detection_rules.effect(check, descriptor)
                    bounds.append(sign * (lower if sign > 0 else upper))
                finite = [b for b in bounds if math.isfinite(b)]
                if run["kind"] != "memorize" and finite:
                    closest.append(max(finite))
                elif run["kind"] == "memorize" and math.isfinite(bounds[0]):
                    weakest.append(bounds[0])
            if closest or weakest:
                gen = f"{max(closest):+.2f}" if closest else "-"
                mem = f"{min(weakest):+.2f}" if weakest else "-"
                lines.append(f"| {descriptor} ({sign:+d}) | {name} | {gen} | {mem} |")
    return "\n".join(lines)


def truth_at(run: Run, epoch: int | None, key: str) -> float:
    """The ground truth ``key`` at ``epoch`` (NaN where it was not computed)."""
    for record in run["epochs"]:
        if record["epoch"] == epoch:
            return record["truth"].get(key, math.nan)
    return math.nan


def last_truth(run: Run, key: str) -> float:
    values = [e["truth"][key] for e in run["epochs"] if key in e["truth"]]
    return values[-1] if values else math.nan


def runs_summary(results: Sequence[Run], classes: dict[str, ModelClass]) -> str:
    """Per class and kind: runs, seconds each, best-validation epochs, and the ground truth at
    the first and the last check (median [range] over the seeds)."""
    lines = [
        "| class | kind | runs | epochs | checks | seconds each | best val epoch (median "
        "[range]) | ground truth | at the first check | at the last check |",
        "|---|---|---:|---:|---:|---|---|---|---|---|",
    ]
    for name, model_class in classes.items():
        key = model_class.truth_key
        for kind in (*KINDS, *model_class.long_kinds):
            runs = runs_of(results, name, kind)
            if not runs:
                continue
            seconds = spread([r["seconds"] for r in runs], ".0f")
            best = spread([b for r in runs if (b := best_epoch(r)) is not None], "g")
            first = [truth_at(r, r["checks"][0]["epoch"], key) for r in runs if r["checks"]]
            last = [last_truth(r, key) for r in runs]
            lines.append(
                f"| {name} | {kind} | {len(runs)} | {runs[0]['plan']['epochs']} | "
                f"{len(runs[0]['checks'])} | {seconds} | {best} | {key} | "
                f"{spread([v for v in first if math.isfinite(v)], '.3g')} | "
                f"{spread([v for v in last if math.isfinite(v)], '.3g')} |"
            )
    return "\n".join(lines)
