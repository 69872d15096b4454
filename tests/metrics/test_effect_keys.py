"""The effect keys of the train-vs-val metrics against scipy's Mann-Whitney U."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lightning_memwatch.metrics.density import DensityGap
from lightning_memwatch.metrics.likelihood import LikelihoodGap
from lightning_memwatch.metrics.recovery import RecoveryGap
from lightning_memwatch.metrics.spectrum import SpectrumGap
from tests.devices import DEVICE, on_device


def cliffs_delta(a: np.ndarray, b: np.ndarray) -> float:
    u = stats.mannwhitneyu(a, b, alternative="two-sided").statistic
    return 2 * u / (len(a) * len(b)) - 1


@pytest.mark.parametrize("metric_class", [RecoveryGap, LikelihoodGap])
def test_effect_keys_are_cliffs_delta_and_bounds(metric_class, rng):
    train, val = rng.normal(-1.0, 1.0, size=30), rng.normal(0.0, 1.0, size=25)
    metric = metric_class().to(DEVICE)
    metric.update(on_device(np.concatenate([train, [np.nan]])), "train")
    metric.update(on_device(val), "val")
    out = metric.compute()
    assert float(out["effect"]) == pytest.approx(cliffs_delta(train, val), abs=1e-12)
    assert float(out["effect_lower"]) < float(out["effect"]) < float(out["effect_upper"])
    assert set(metric.stats) >= {"effect", "effect_lower", "effect_upper"}


def test_descriptor_families_add_effect_keys_only_when_turned_on(rng):
    """``effects`` is off by default on the descriptor families (their monitor declares its keys
    from ``stats``); turned on, every descriptor gets ``d/effect`` and its bounds."""
    metric = DensityGap().to(DEVICE)
    values = {d: on_device(rng.normal(size=12)) for d in metric.descriptors}
    metric.set_samples({"train": values, "val": values})
    assert not any(k.endswith("effect") for k in metric.compute())
    assert SpectrumGap().stats == ("train", "val", "gap", "ks_pvalue")
    metric.effects = True
    metric.set_samples({"train": values, "val": values})  # compute() caches until an update
    out = metric.compute()
    for d in metric.descriptors:
        # identical train and val samples: every pair a tie, delta exactly 0
        assert float(out[f"{d}/effect"]) == 0.0
        assert {f"{d}/effect_lower", f"{d}/effect_upper"} <= set(out)
