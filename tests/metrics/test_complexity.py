"""ComplexityGap and the TrainValGap rule for a family without a descriptor level."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_memwatch.metrics import ComplexityGap, TrainValGap
from tests.devices import DEVICE, on_device
from tests.metrics.test_train_val import reference


def test_complexity_gap_matches_numpy_with_keys_without_a_descriptor_level(rng):
    train = rng.poisson(6.0, size=30).astype(float)
    val = rng.poisson(4.0, size=25).astype(float)
    val[3] = np.nan
    metric = ComplexityGap().to(DEVICE)
    metric.update(on_device(train[:10]), "train")
    metric.update(on_device(train[10:]), "train")
    metric.update(on_device(val), "val")
    out = metric.compute()
    assert set(out) == {"train", "val", "gap", "ks_pvalue", "nonfinite"}
    for key, value in reference(train, val).items():
        assert out[key].item() == pytest.approx(value, rel=1e-10, abs=1e-12), key
    np.testing.assert_array_equal(metric.samples("complexity", "train").cpu().numpy(), train)
    assert [metric.key("complexity", s) for s in ("train", "gap")] == ["train", "gap"]


def test_descriptor_level_is_kept_by_default_and_needs_one_descriptor_to_drop():
    class Two(TrainValGap):
        descriptors = ("a", "b")

        def update(self, split, **values):
            self._append(split, values)

    two = Two().to(DEVICE)
    two.update("train", a=on_device([1.0]), b=on_device([2.0]))
    assert {"a/train", "b/train", "a/nonfinite"} <= set(two.compute())
    assert two.key("a", "train") == "a/train"
    with pytest.raises(TypeError, match="exactly one descriptor"):

        class Flat(TrainValGap):
            descriptors = ("a", "b")
            descriptor_level = False


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError, match=r"counts.*\(B,\)"):
        ComplexityGap().update(torch.zeros(3, 2), "train")
    with pytest.raises(ValueError, match="split"):
        ComplexityGap().update(torch.zeros(3), "test")
