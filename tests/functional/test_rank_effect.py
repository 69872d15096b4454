"""Cliff's delta and its DeLong bounds against scipy's Mann-Whitney U and a numpy DeLong."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_memwatch.functional.stats import Z_95, rank_effect
from tests.devices import DEVICE


def delong_numpy(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """AUC = P(a > b) + P(a = b) / 2 and its DeLong variance, by explicit loops in float64."""
    placements_a = np.array([np.mean([(x > y) + 0.5 * (x == y) for y in b]) for x in a])
    placements_b = np.array([np.mean([(x > y) + 0.5 * (x == y) for x in a]) for y in b])
    auc = placements_a.mean()
    variance = placements_a.var(ddof=1) / len(a) + placements_b.var(ddof=1) / len(b)
    return float(auc), float(variance)


@pytest.mark.parametrize(("n_a", "n_b", "shift"), [(32, 32, 0.0), (20, 45, 0.8), (7, 5, -1.5)])
def test_delta_is_scaled_mann_whitney_u(n_a, n_b, shift, rng):
    a, b = rng.normal(shift, 1.0, size=n_a), rng.normal(0.0, 1.0, size=n_b)
    u = stats.mannwhitneyu(a, b, alternative="two-sided").statistic  # U of a: #(a > b) + ties/2
    delta, _, _ = rank_effect(torch.tensor(a, device=DEVICE), b)
    assert delta == pytest.approx(2 * u / (n_a * n_b) - 1, abs=1e-12)


def test_bounds_are_delong_with_ties(rng):
    a = rng.integers(0, 5, size=25).astype(float)  # many ties
    b = rng.integers(1, 6, size=18).astype(float)
    auc, variance = delong_numpy(a, b)
    delta, lower, upper = rank_effect(
        torch.tensor(a, device=DEVICE), torch.tensor(b, device=DEVICE)
    )
    half = Z_95 * 2 * math.sqrt(variance)
    assert delta == pytest.approx(2 * auc - 1, abs=1e-12)
    assert lower == pytest.approx(max(-1.0, 2 * auc - 1 - half), abs=1e-12)
    assert upper == pytest.approx(min(1.0, 2 * auc - 1 + half), abs=1e-12)


def test_z_is_the_one_sided_95_normal_quantile():
    assert stats.norm.ppf(0.95) == pytest.approx(Z_95, abs=1e-12)


def test_non_finite_dropped_and_too_small_is_nan(rng):
    a, b = rng.normal(size=10), rng.normal(size=12)
    dirty = np.concatenate([a, [np.nan, np.inf]])
    assert rank_effect(dirty, b) == pytest.approx(rank_effect(a, b), abs=1e-12)
    assert all(math.isnan(v) for v in rank_effect(np.array([1.0, np.nan]), b))


def test_lower_bound_is_calibrated_under_the_null():
    """Train and val from one distribution: the one-sided 95 % lower bound passes 0 in about 5 %
    of 2,000 seeded draws of 32 + 32 (binomial sd 0.5 %; allowed 5 % + 3 sd) and the bound
    passes a threshold of 0.3 (the rule's margin) in none."""
    generator = np.random.default_rng(7)
    lowers = np.array(
        [rank_effect(generator.normal(size=32), generator.normal(size=32))[1] for _ in range(2000)]
    )
    assert np.mean(lowers > 0) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)
    assert np.mean(lowers > 0) >= 0.02  # not vacuously conservative
    assert np.mean(lowers > 0.3) == 0.0


def test_size_does_not_grow_with_the_sample_and_the_bound_tightens():
    """A fixed, small shift (0.2 sd: true delta = 2 Phi(0.2 / sqrt 2) - 1 = 0.112): delta stays
    near it from 32 to 4,000 samples while a KS p-value would drop to 0; the bound tightens."""
    generator = np.random.default_rng(3)
    truth = 2 * stats.norm.cdf(0.2 / math.sqrt(2)) - 1
    small = rank_effect(generator.normal(0.2, 1, 32), generator.normal(0, 1, 32))
    large = rank_effect(generator.normal(0.2, 1, 4000), generator.normal(0, 1, 4000))
    assert large[0] == pytest.approx(truth, abs=0.03)
    assert large[2] - large[1] < 0.1 < small[2] - small[1]
    assert large[1] < 0.3  # a threshold above a harmless gap is never crossed
