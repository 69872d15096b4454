"""Memorization rules evaluated offline on the recorded checks of ``benchmarks/detection.py``.

A rule reads one check (the logged scalars and per-sample values of one measurement epoch) and
says whether its condition holds; it *fires* at the first check where the condition has held at
``patience + 1`` consecutive checks (``MemorizationEarlyStopping``'s count; a NaN check neither
counts nor resets). A memorizing run is detected when the rule fires at any check; a
generalizing run is a false alarm when it does.

Families of rules:

- ``paper``: the papers' absolute signs and thresholds on the logged scalars;
- ``ks``: the two-sample KS p-value of a descriptor below 0.01 (Webster et al. (2019), sec. 3.3);
- ``effect``: Cliff's delta of train against val with a one-sided 95 % DeLong bound
  (:func:`~lightning_memwatch.functional.stats.rank_effect`) past a margin ``t`` in the
  memorization direction of the descriptor (:data:`SIGNS`; both directions where no paper
  gives one);
- ``drift``: the same effect minus the effect at the run's first check (a reference from the
  same run, before the model had time to memorize), past ``t``;
- ``k_of_n``: at least ``k`` of a set of effect rules hold at the same check.

:func:`tunables`: the rules a user sets with one threshold ``t`` (the package callbacks that
express each are in its label), each with a grid of ``t`` from liberal to conservative, for the
split-half choice of ``detection_split.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from lightning_memwatch.functional.stats import rank_effect

#: Memorization direction of ``delta(train, val)`` per per-sample descriptor (README key table,
#: from the papers): ``-1`` train below val, ``+1`` train above val, ``0`` no sign established.
SIGNS = {
    "recovery/errors": -1,  # Webster et al.: train errors far below val
    "likelihood/likelihood": +1,  # van den Burg: training samples more likely
    "spectrum/log_volume": -1,  # Humayun et al.: the decoder contracts around training points
    "spectrum/local_rank": 0,
    "spectrum/intrinsic_dim": 0,
    "spectrum/log_condition": 0,
    "density/dip": +1,  # Feiszli: dip positive
    "density/decay": -1,  # Feiszli: decay negative, train below val
    "density/decay/unreached": +1,  # flat memorized regions: train unreached above val
}

Check = dict[str, Any]
Condition = Callable[[Check, Check], float]  # (check, first check) -> 1, 0 or NaN


class Rule(NamedTuple):
    name: str
    family: str
    condition: Condition
    patience: int = 0


def _samples(check: Check, descriptor: str) -> tuple[np.ndarray, np.ndarray] | None:
    samples = check["samples"]
    train, val = samples.get(f"{descriptor}/train"), samples.get(f"{descriptor}/val")
    if train is None or val is None:
        return None
    return np.asarray(train, dtype=float), np.asarray(val, dtype=float)


def effect(check: Check, descriptor: str) -> tuple[float, float, float]:
    """``rank_effect(train, val)`` of a descriptor at a check, cached in the check."""
    cache = check.setdefault("_effects", {})
    if descriptor not in cache:
        pair = _samples(check, descriptor)
        cache[descriptor] = (math.nan,) * 3 if pair is None else rank_effect(*pair)
    return cache[descriptor]


def _truth(value: float, holds: bool) -> float:
    return math.nan if not math.isfinite(value) else float(holds)


def scalar_rule(key: str, threshold: float, mode: str) -> Condition:
    def condition(check: Check, first: Check) -> float:
        value = check["scalars"].get(key, math.nan)
        return _truth(value, value < threshold if mode == "below" else value > threshold)

    return condition


def gap_rule(key_train: str, key_val: str, threshold: float) -> Condition:
    """``scalars[key_train] - scalars[key_val] > threshold``."""

    def condition(check: Check, first: Check) -> float:
        scalars = check["scalars"]
        value = scalars.get(key_train, math.nan) - scalars.get(key_val, math.nan)
        return _truth(value, value > threshold)

    return condition


def effect_rule(descriptor: str, margin: float, sign: int) -> Condition:
    """``sign = +1``: lower bound above ``margin``; ``-1``: upper bound below ``-margin``;
    ``0``: either."""

    def condition(check: Check, first: Check) -> float:
        delta, lower, upper = effect(check, descriptor)
        up, down = lower > margin, upper < -margin
        holds = up if sign > 0 else down if sign < 0 else up or down
        return _truth(delta, holds)

    return condition


def drift_rule(descriptor: str, margin: float, sign: int) -> Condition:
    """The bound's move since the first check, ``sign * (bound - first delta) > margin``."""

    def condition(check: Check, first: Check) -> float:
        delta, lower, upper = effect(check, descriptor)
        start = effect(first, descriptor)[0]
        bound = lower if sign > 0 else upper
        return _truth(delta - start, sign * (bound - start) > margin)

    return condition


def k_of_n(conditions: Sequence[Condition], k: int) -> Condition:
    """At least ``k`` of ``conditions`` hold (NaN conditions neither hold nor count)."""

    def condition(check: Check, first: Check) -> float:
        values = [c(check, first) for c in conditions]
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return math.nan
        return float(sum(finite) >= k)

    return condition


def fired_epoch(rule: Rule, checks: Sequence[Check]) -> int | None:
    """First epoch the rule fires at (``patience + 1`` consecutive holding checks)."""
    if not checks:
        return None
    run = 0
    for check in checks:
        value = rule.condition(check, checks[0])
        if not math.isfinite(value):
            continue
        run = run + 1 if value else 0
        if run > rule.patience:
            return int(check["epoch"])
    return None


PAPER = (
    ("memwatch/recovery/ks_pvalue", 0.01, "below", "Webster et al. (2019), sec. 3.3: KS p < 0.01"),
    ("memwatch/recovery/mre_gap", 0.10, "above", "Webster et al. (2019), eq. 5: MRE-gap > 0.10"),
    ("memwatch/spectrum/log_volume/gap", 0.0, "below", "Humayun et al.: psi gap < 0"),
    ("memwatch/density/dip/train", 0.0, "above", "Feiszli: dip (train) > 0"),
    ("memwatch/density/decay/train", 0.0, "below", "Feiszli: decay (train) < 0"),
    ("memwatch/density/decay/gap", 0.0, "below", "Feiszli: decay gap < 0"),
    ("memwatch/likelihood/gap", 0.0, "above", "van den Burg: likelihood gap > 0"),
    ("memwatch/samples/ct", -3.0, "below", "Meehan: C_T < -3"),
)
MARGINS = (0.0, 0.3, 0.5, 0.7)
#: Descriptors of the headline effect rules; all of :data:`SIGNS` appear at margin 0.5.
HEADLINE = ("recovery/errors", "likelihood/likelihood", "spectrum/log_volume", "density/decay")
#: Descriptors of the effect-margins table with their memorization direction: the headline ones
#: and the ``DiffusionMonitor`` loss and psi (``diffusion/<family>/<descriptor>``, lower on
#: training samples under memorization: Ho et al. 2020's loss; Humayun et al.'s psi).
MARGIN_SIGNS = {
    **{d: SIGNS[d] for d in HEADLINE},
    "diffusion/loss/loss": -1,
    "diffusion/spectrum/log_volume": -1,
}


def rules() -> list[Rule]:
    """Every rule of the table, in its print order."""
    out = [Rule(label, "paper", scalar_rule(k, t, m)) for k, t, m, label in PAPER]
    unreached = "memwatch/density/decay/unreached"
    for margin in (0.1, 0.25):
        label = f"decay unreached share, train - val > {margin:g}"
        out.append(Rule(label, "paper", gap_rule(f"{unreached}/train", f"{unreached}/val", margin)))
    for descriptor in SIGNS:
        key = descriptor.replace("/errors", "").replace("/likelihood/likelihood", "/likelihood")
        ks_key = f"memwatch/{key}/ks_pvalue"
        out.append(Rule(f"KS p < 0.01: {descriptor}", "ks", scalar_rule(ks_key, 0.01, "below")))
    for descriptor, sign in SIGNS.items():
        margins = MARGINS if descriptor in HEADLINE else (0.5,)
        for margin in margins:
            for patience in (0, 1):
                label = f"effect {descriptor}: bound past {margin:g} (sign {sign:+d}), p={patience}"
                out.append(Rule(label, "effect", effect_rule(descriptor, margin, sign), patience))
    for descriptor in HEADLINE:
        for margin in (0.3, 0.5):
            label = f"drift {descriptor}: bound moved {margin:g} since first check"
            out.append(Rule(label, "drift", drift_rule(descriptor, margin, SIGNS[descriptor])))
    pairs = {
        "recovery+spectrum": ("recovery/errors", "spectrum/log_volume"),
        "recovery+likelihood": ("recovery/errors", "likelihood/likelihood"),
        "recovery+decay": ("recovery/errors", "density/decay"),
    }
    for name, descriptors in pairs.items():
        for margin in (0.3, 0.5):
            conds = [effect_rule(d, margin, SIGNS[d]) for d in descriptors]
            label = f"2 of 2 ({name}) effects past {margin:g}"
            out.append(Rule(label, "k_of_n", k_of_n(conds, 2)))
    conds = [effect_rule(d, 0.5, SIGNS[d]) for d in HEADLINE]
    out.append(Rule("2 of 4 headline effects past 0.5", "k_of_n", k_of_n(conds, 2)))
    for margin in (0.3, 0.5):  # what a scalar family in EffectAgreement would give (not today)
        conds = [effect_rule("spectrum/log_volume", margin, -1), scalar_rule(CT, -3.0, "below")]
        label = f"psi effect past {margin:g} and C_T < -3 (not expressible by one stopper)"
        out.append(Rule(label, "k_of_n", k_of_n(conds, 2)))
    return out


CT = "memwatch/samples/ct"
EFFECT_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


class Tunable(NamedTuple):
    """A rule with one threshold: ``make(t)`` for each ``t`` of ``grid`` (liberal first);
    ``config`` is the package's callbacks for it, ``{t}`` standing for the threshold."""

    name: str
    config: str
    make: Callable[[float], Rule]
    grid: tuple[float, ...]
    default: float


#: The per-sample descriptors ``EffectAgreement`` reads, per kind of model (both lower on
#: training samples under memorization): its default families, the recovery errors and psi of a
#: decoder; and on a diffusion model the ``DiffusionMonitor`` families that stand for them
#: (``docs/diffusion.md``, "Rules"): the denoising loss and the x0-estimate's psi.
AGREEMENT_PAIRS = (
    ("recovery/errors", "spectrum/log_volume"),
    ("diffusion/loss/loss", "diffusion/spectrum/log_volume"),
)


def agreement_rule(margin: float) -> Condition:
    """``EffectAgreement``'s ``bound > margin`` on a check: both effects of the first pair of
    :data:`AGREEMENT_PAIRS` that the check has a descriptor of have their upper bound below
    ``-margin`` (the first pair where the check has none)."""
    rules = [k_of_n([effect_rule(d, margin, -1) for d in pair], 2) for pair in AGREEMENT_PAIRS]

    def condition(check: Check, first: Check) -> float:
        for pair, rule in zip(AGREEMENT_PAIRS, rules, strict=True):
            if any(_samples(check, d) is not None for d in pair):
                return rule(check, first)
        return rules[0](check, first)

    return condition


def _agreement(t: float) -> Rule:
    return Rule(f"agreement (recovery + psi) bound > {t:g}", "tuned", agreement_rule(t))


def tunables() -> list[Tunable]:
    """The one-threshold rules of the split-half table; the first is the recommended one."""
    stop = "MemorizationEarlyStopping"
    return [
        Tunable(
            "agreement (recovery + psi) bound > t",
            f'EffectAgreement() + {stop}("memwatch/agreement/bound", threshold={{t}}, '
            'mode="above")',
            _agreement,
            EFFECT_GRID,
            0.3,
        ),
        Tunable(
            "recovery effect_upper < -t",
            f'{stop}("memwatch/recovery/effect_upper", threshold=-{{t}}, mode="below")',
            lambda t: Rule(
                f"recovery effect_upper < -{t:g}",
                "tuned",
                effect_rule("recovery/errors", t, -1),
            ),
            EFFECT_GRID,
            0.5,
        ),
        Tunable(
            "psi effect_upper < -t",
            f'{stop}("memwatch/spectrum/log_volume/effect_upper", threshold=-{{t}}, mode="below")',
            lambda t: Rule(
                f"psi effect_upper < -{t:g}", "tuned", effect_rule("spectrum/log_volume", t, -1)
            ),
            EFFECT_GRID,
            0.5,
        ),
        Tunable(
            "C_T < -t",
            f'{stop}("memwatch/samples/ct", threshold=-{{t}}, mode="below")',
            lambda t: Rule(f"C_T < -{t:g}", "tuned", scalar_rule(CT, -t, "below")),
            (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0),
            3.0,
        ),
    ]
