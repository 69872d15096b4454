"""The fit summary in words (:mod:`~lightning_memwatch.callbacks.machinery.summary` builds it):
one head line and one line per memwatch callback, for the console and TensorBoard text."""

from __future__ import annotations

import math
from typing import Any


def _number(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _values(values: dict[str, Any]) -> str:
    """``spectrum/psi train -12.9 val -9.12 gap -3.81 (effect_upper -0.91)``, per headline."""
    parts = []
    for name, v in values.items():
        split = f" train {_number(v['train'])} val {_number(v['val'])}" if v["train"] else ""
        bound = f" ({v['bound_key']} {_number(v['bound'])})" if v["bound_key"] else ""
        parts.append(f"{name}{split} gap {_number(v['gap'])}{bound}")
    return "; ".join(parts)


def monitor_line(s: dict[str, Any]) -> str:
    """A monitor's line: what it measured, its last values, what it spent and, where its
    budget left it nearly silent, the setting to change."""
    last = f", last at epoch {s['last_epoch']}" if s["last_epoch"] is not None else ""
    share = s["probe_share"]
    probe = f"{s['probe_size']} + {s['probe_size']} probe"
    covered = f"its {probe}" if share is None else f"{100 * share:.0f} % of its {probe}"
    line = (
        f"{s['callback']}: measured {s['measured_epochs']} of {s['epochs']} epochs{last}, "
        f"{covered}, {s['seconds']:.2f} s ({100 * s['share']:.1f} % of the run)"
    )
    if s["values"]:
        line += "; " + _values(s["values"])
    never = s["never_affordable"]
    if never:
        first = next(iter(never.values()))
        costs = ", ".join(f"{f} {v['predicted_seconds']:.2g} s" for f, v in never.items())
        line += (
            f"; never affordable in this run: {costs} for {first['size']} samples, against "
            f"{first['earned_seconds']:.2g} s its budget had left by the end "
            f"({s['train_start_seconds']:.2g} s went to its checks when training started)"
        )
    advice = s["advice"]
    if advice is not None:
        line += (
            f"; to measure it about {advice['measurements']} times, pass "
            f"{advice['setting']}={advice['value']:g} (predicted "
            f"{advice['predicted_seconds']:.2g} s)"
        )
    return line


def rule_line(s: dict[str, Any]) -> str:
    """``MemorizationEarlyStopping``'s line: fired, not fired, or not evaluated."""
    head = f"{s['callback']}({s['rule']})"
    if s["fired_epoch"] is not None:
        action = "reported only" if s["report_only"] else "training stopped"
        return f"{head}: fired at epoch {s['fired_epoch']} ({action})"
    if s["checks"] < s["needed_checks"]:
        return (
            f"{head}: could not be evaluated: {s['checks']} fresh check(s) of {s['monitor']}, "
            f"it needs {s['needed_checks']} (too few measurements)"
        )
    return f"{head}: not fired in {s['checks']} checks, last {_number(s['last_value'])}"


def agreement_line(s: dict[str, Any]) -> str:
    """``EffectAgreement``'s line: its last bound, or why there is none."""
    if not s["bounds_logged"]:
        return (
            f"{s['callback']}: no {s['key']} logged (the monitors it reads never measured at "
            "the same epoch)"
        )
    return (
        f"{s['callback']}: {s['key']} {_number(s['last_bound'])} at epoch {s['last_epoch']} "
        f"({s['bounds_logged']} logged)"
    )


def summary_lines(summary: dict[str, Any], reason: str = "") -> list[str]:
    """The summary in words, one line per callback (the console and TensorBoard text)."""
    budget = summary["max_overhead"]
    lines = [
        f"memwatch summary{f' ({reason})' if reason else ''}: {summary['epochs']} epochs, "
        f"{summary['run_seconds']:.1f} s outside the monitors; the monitors spent "
        f"{summary['seconds']:.2f} s ({100 * summary['share']:.1f} %, budget "
        + ("off)" if budget == math.inf else f"{100 * budget:g} %)")
    ]
    for s in summary["callbacks"]:
        if "measured_epochs" in s:
            lines.append(monitor_line(s))
        elif "rule" in s:
            lines.append(rule_line(s))
        elif "bounds_logged" in s:
            lines.append(agreement_line(s))
    return lines
