"""Rates with exact bounds, and a threshold chosen on one half of the seeds, for
``benchmarks/detection.py``.

- :func:`upper_bound` / :func:`lower_bound`: the exact one-sided Clopper-Pearson (1934) bounds
  of a binomial rate from ``k`` events in ``n`` runs, ``Beta(conf; k + 1, n - k)`` above and
  ``Beta(1 - conf; k, n - k + 1)`` below (``scipy.stats.beta``). With no event the upper bound
  is ``1 - (1 - conf)^(1/n)`` (``3 / n`` by the rule of three), with every run an event the
  lower bound is ``(1 - conf)^(1/n)``.
- :func:`choose_threshold`: the threshold of a one-threshold rule, from its counts on the tuning
  half: the thresholds whose false alarms stay within ``max_alarms`` of the generalizing runs
  are admissible; among them, those with the most detections; among those, the middle one of
  the grid (its more conservative middle for an even count), which leaves a margin on both
  sides. With no admissible threshold, the one with the fewest false alarms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from scipy import stats


def upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper Clopper-Pearson bound of the rate of ``k`` events in ``n`` runs.

    Example::

        >>> round(upper_bound(0, 60), 4), round(1 - 0.05 ** (1 / 60), 4)
        (0.0487, 0.0487)
    """
    if n == 0:
        return math.nan
    if k >= n:
        return 1.0
    return float(stats.beta.ppf(confidence, k + 1, n - k))


def lower_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided lower Clopper-Pearson bound of the rate of ``k`` events in ``n`` runs.

    Example::

        >>> round(lower_bound(12, 12), 4), round(0.05 ** (1 / 12), 4)
        (0.7791, 0.7791)
    """
    if n == 0:
        return math.nan
    if k <= 0:
        return 0.0
    return float(stats.beta.ppf(1 - confidence, k, n - k + 1))


class Counts(NamedTuple):
    """Detected of memorizing runs, false alarms of generalizing runs."""

    detected: int
    memorizing: int
    alarms: int
    generalizing: int


def rate(k: int, n: int, upper: bool) -> str:
    """``k/n (bound)``: the upper bound for a false-alarm rate, the lower for a detection rate."""
    if n == 0:
        return "n/a"
    bound = upper_bound(k, n) if upper else lower_bound(k, n)
    return f"{k}/{n} ({'<=' if upper else '>='} {100 * bound:.0f}%)"


def choose_threshold(
    grid: Sequence[float], counts: Sequence[Counts], max_alarms: float = 0.0
) -> float:
    """The threshold of the module docstring; ``grid`` from liberal to conservative, ``counts``
    its counts on the tuning half, ``max_alarms`` the admissible share of false alarms.

    Example::

        >>> c = [Counts(6, 6, 2, 6), Counts(6, 6, 0, 6), Counts(6, 6, 0, 6), Counts(3, 6, 0, 6)]
        >>> choose_threshold([0.1, 0.2, 0.3, 0.4], c)
        0.3
    """
    if len(grid) != len(counts) or not grid:
        raise ValueError(f"Expected one count per threshold but got {len(grid)} and {len(counts)}")
    admissible = [
        i for i, c in enumerate(counts) if c.alarms <= max_alarms * max(c.generalizing, 1)
    ]
    if not admissible:
        fewest = min(c.alarms for c in counts)
        admissible = [i for i, c in enumerate(counts) if c.alarms == fewest]
    best = max(counts[i].detected for i in admissible)
    tied = [i for i in admissible if counts[i].detected == best]
    return grid[tied[len(tied) // 2]]
