"""Recovery without an encoder, by probe size: the GAN table of ``benchmarks/detection.py``.

For each probe size of ``--gan-probes``, the GAN's memorizing runs (probe 32: their 32 training
digits bound it) against its generalizing runs at that probe: each key at the first and the
last check (median [range] over the seeds), and whether the usual rules on it fire (detected,
false alarms over every seed). A key separates the runs where the two ranges do not overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from detection_rules import CT, Rule, effect, effect_rule, k_of_n, scalar_rule
from detection_tables import Run, fired, spread

#: (label, how to read a check, memorization direction): the logged scalars, and the effect
#: bounds from the tables. C_T and the copy fraction come from ``SampleMonitor``, whose held-out
#: probe (64) is the same at every probe size of the other two monitors.
KEYS: tuple[tuple[str, Any, int], ...] = (
    ("MRE-gap", "memwatch/recovery/mre_gap", +1),
    ("recovery KS p", "memwatch/recovery/ks_pvalue", -1),
    ("recovery effect_upper", ("recovery/errors", 2), -1),
    ("psi gap", "memwatch/spectrum/log_volume/gap", -1),
    ("psi KS p", "memwatch/spectrum/log_volume/ks_pvalue", -1),
    ("psi effect_upper", ("spectrum/log_volume", 2), -1),
    ("C_T", CT, -1),
    ("copy_fraction", "memwatch/samples/copy_fraction", +1),
)


def probe_rules() -> list[Rule]:
    recovery, psi = "recovery/errors", "spectrum/log_volume"
    return [
        Rule("MRE-gap > 0.10", "paper", scalar_rule("memwatch/recovery/mre_gap", 0.10, "above")),
        Rule(
            "KS p < 0.01 (recovery)",
            "ks",
            scalar_rule("memwatch/recovery/ks_pvalue", 0.01, "below"),
        ),
        Rule("recovery effect_upper < -0.5", "effect", effect_rule(recovery, 0.5, -1)),
        Rule("psi effect_upper < -0.5", "effect", effect_rule(psi, 0.5, -1)),
        Rule("C_T < -3", "paper", scalar_rule(CT, -3.0, "below")),
        Rule(
            "agreement (recovery + psi) > 0.3",
            "k_of_n",
            k_of_n([effect_rule(recovery, 0.3, -1), effect_rule(psi, 0.3, -1)], 2),
        ),
    ]


def value(check: dict[str, Any], how: Any) -> float:
    if isinstance(how, str):
        return check["scalars"].get(how, math.nan)
    descriptor, index = how
    return effect(check, descriptor)[index]


def _values(runs: Sequence[Run], how: Any, last: bool) -> str:
    values = [value(r["checks"][-1 if last else 0], how) for r in runs if r["checks"]]
    return spread([v for v in values if math.isfinite(v)], ".3g")


def _worst(runs: Sequence[Run], how: Any, sign: int) -> str:
    """Per run, the most memorization-like value over its checks (what a threshold meets)."""
    values = []
    for run in runs:
        finite = [v for c in run["checks"] if math.isfinite(v := value(c, how))]
        if finite:
            values.append(max(finite) if sign > 0 else min(finite))
    return spread(values, ".3g")


def probe_table(memorizing: Sequence[Run], by_probe: dict[int, list[Run]]) -> str:
    """One block of rows per probe size: keys at the first and last check, then rules."""
    lines = [
        "| probe (generalizing runs) | key or rule | memorizing (probe 32), first check | "
        "generalizing, first check | memorizing, last check | generalizing, last check | "
        "generalizing, most memorization-like check |",
        "|---:|---|---|---|---|---|---|",
    ]
    for probe, generalizing in sorted(by_probe.items()):
        for label, how, sign in KEYS:
            cells = [
                _values(runs, how, last)
                for last in (False, True)
                for runs in (memorizing, generalizing)
            ]
            cells.append(_worst(generalizing, how, sign))
            lines.append(f"| {probe} | {label} | " + " | ".join(cells) + " |")
        for rule in probe_rules():
            det = sum(fired(rule, r) is not None for r in memorizing)
            fa = sum(fired(rule, r) is not None for r in generalizing)
            lines.append(
                f"| {probe} | rule: {rule.name} | detected {det}/{len(memorizing)} | "
                f"false alarms {fa}/{len(generalizing)} | | | |"
            )
    return "\n".join(lines)
