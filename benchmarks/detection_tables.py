"""The tables of ``benchmarks/detection.py``: rules evaluated on cached runs, per model class."""

from __future__ import annotations

import math
import statistics
from typing import Any

import detection_rules
from detection_runs import CLASSES, KINDS, LONG_KINDS


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
            for long_kind in LONG_KINDS:
                long_runs = [
                    r for r in results if r["model_class"] == model_class and r["kind"] == long_kind
                ]
                if long_runs:
                    fired_long = [detection_rules.fired_epoch(rule, r["checks"]) for r in long_runs]
                    cell[long_kind] = (sum(f is not None for f in fired_long), len(long_runs))
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
    longs = {
        kind: [c for c in CLASSES if kind in rows[0]["classes"][c]]
        for kind in LONG_KINDS
        if rows and any(kind in rows[0]["classes"][c] for c in CLASSES)
    }
    for kind, classes in longs.items():
        header += f" {LONG_KINDS[kind]}-long FA ({', '.join(classes)}) |"
    lines = [header, "|---|" + "---:|" * (3 * len(CLASSES) + 2 + len(longs))]
    for row in rows:
        cells, det, fa = [], [0, 0], [0, 0]
        for model_class in CLASSES:
            cell = row["classes"][model_class]
            cells += [_share(cell["memorize"]), _share(cell["generalize"]), cell["delay"]]
            for total, kind in ((det, "memorize"), (fa, "generalize")):
                total[0] += cell[kind][0]
                total[1] += cell[kind][1]
        cells += [_share(tuple(det)), _share(tuple(fa))]
        for kind, classes in longs.items():
            cells.append(", ".join(_share(row["classes"][c][kind]) for c in classes))
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
                if (run["kind"] == "generalize" or run["kind"] in LONG_KINDS) and finite:
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
        for kind in (*KINDS, *LONG_KINDS):
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
