"""KS p-value and MRE-gap against independent float64 computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_memwatch.functional.stats import ks_pvalue, mre_gap
from tests.devices import DEVICE


@pytest.mark.parametrize("n", [3, 5, 8])
def test_ks_pvalue_of_separated_samples_is_the_exact_closed_form(n):
    """Two samples of n with every a below every b: D = 1, and the exact two-sided p-value is
    the chance that a random split of 2n ranks is one of the two extreme ones: 2 / C(2n, n)."""
    a = torch.arange(n, dtype=torch.float32, device=DEVICE)
    assert ks_pvalue(a, a + 100.0) == pytest.approx(2 / math.comb(2 * n, n), rel=1e-12)


def test_ks_pvalue_drops_non_finite_values(rng):
    a, b = rng.normal(size=40), rng.normal(0.5, 1.0, size=30)
    a_dirty = np.concatenate([a, [np.nan, np.inf]])
    b_dirty = np.concatenate([[-np.inf], b, [np.nan]])
    expected = stats.ks_2samp(a, b).pvalue
    assert ks_pvalue(torch.tensor(a_dirty, device=DEVICE), b_dirty) == pytest.approx(
        expected, rel=1e-12
    )
    assert math.isnan(ks_pvalue(torch.tensor([np.nan], device=DEVICE), b))


def test_ks_pvalue_identical_samples():
    same = torch.arange(10.0, device=DEVICE)
    assert ks_pvalue(same, same.clone()) == 1.0


def test_mre_gap_is_webster_eq5(rng):
    train, val = rng.exponential(1.0, size=31), rng.exponential(3.0, size=20)
    expected = (np.median(val) - np.median(train)) / np.median(val)
    assert mre_gap(
        torch.tensor(train, device=DEVICE), torch.tensor(val, device=DEVICE)
    ) == pytest.approx(expected, rel=1e-12)
    with_nan = np.concatenate([val, [np.nan]])
    assert mre_gap(train, with_nan) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(mre_gap(train, np.zeros(4)))
    assert math.isnan(mre_gap(np.array([]), val))


def test_samples_must_be_one_dimensional():
    with pytest.raises(ValueError, match="1-D sample"):
        ks_pvalue(torch.zeros(2, 2, device=DEVICE), torch.zeros(3, device=DEVICE))
