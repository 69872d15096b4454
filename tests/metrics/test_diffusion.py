"""The diffusion metrics against numpy: loss means, gaps, Cliff's delta per timestep, spectrum
descriptors averaged over timesteps, near-copy shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_memwatch.functional.stats import rank_effect
from lightning_memwatch.metrics import DenoiserSpectrumGap, DenoisingLossGap, SampleCopying


def cliffs_delta(a, b):
    return float(np.sign(a[:, None] - b[None, :]).mean())


def test_loss_gap_equals_numpy(rng):
    train, val = rng.random((12, 3)), rng.random((10, 3)) + 0.3
    metric = DenoisingLossGap(["10", "0.05", "200"])
    metric.update(torch.from_numpy(train[:5]), "train")
    metric.update(torch.from_numpy(train[5:]), "train")
    metric.update(torch.from_numpy(val), "val")
    out = metric.compute()
    mean_t, mean_v = train.mean(1), val.mean(1)
    assert out["train"].item() == pytest.approx(mean_t.mean())
    assert out["val"].item() == pytest.approx(mean_v.mean())
    assert out["gap"].item() == pytest.approx(mean_t.mean() - mean_v.mean())
    assert out["relative_gap"].item() == pytest.approx(
        (mean_v.mean() - mean_t.mean()) / mean_v.mean()
    )
    assert out["effect"].item() == pytest.approx(cliffs_delta(mean_t, mean_v))
    _, lower, upper = rank_effect(torch.from_numpy(mean_t), torch.from_numpy(mean_v))
    assert (out["effect_lower"].item(), out["effect_upper"].item()) == pytest.approx((lower, upper))
    for k, name in enumerate(("t10", "t0.05", "t200")):
        assert out[f"{name}/gap"].item() == pytest.approx(train[:, k].mean() - val[:, k].mean())
        assert out[f"{name}/effect"].item() == pytest.approx(cliffs_delta(train[:, k], val[:, k]))
        assert f"{name}/ks_pvalue" not in out and f"{name}/effect_upper" not in out


def test_loss_gap_rejects_bad_grids_and_shapes():
    with pytest.raises(ValueError, match="distinct timestep names"):
        DenoisingLossGap(["10", "10"])
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        DenoisingLossGap(["1", "2"]).update(torch.zeros(3, 3), "train")


def test_spectrum_descriptors_are_averaged_over_timesteps(rng):
    spectra = [np.sort(rng.random((4, 5)), axis=1)[:, ::-1].copy() for _ in range(2)]
    metric = DenoiserSpectrumGap(rtol=1e-4)
    metric.update([torch.from_numpy(s) for s in spectra], "train")
    metric.update([torch.from_numpy(s[:2] * 2) for s in spectra], "val")
    out = metric.compute()
    psi_train = np.mean([np.log(s).sum(1) for s in spectra], axis=0)
    psi_val = np.mean([np.log(s[:2] * 2).sum(1) for s in spectra], axis=0)
    assert out["log_volume/train"].item() == pytest.approx(psi_train.mean())
    assert out["log_volume/gap"].item() == pytest.approx(psi_train.mean() - psi_val.mean())
    cond = np.mean([np.log(s[:, 0] / s[:, -1]) for s in spectra], axis=0)
    assert out["log_condition/train"].item() == pytest.approx(cond.mean())
    assert out["log_volume/effect"].item() == pytest.approx(cliffs_delta(psi_train, psi_val))
    with pytest.raises(ValueError, match="one per timestep"):
        metric.update(torch.ones(2, 2), "train")


def test_sample_copying_adds_the_near_copy_shares():
    metric = SampleCopying(cells=1, tau=0.0)
    zeros = torch.zeros(4, dtype=torch.long)
    metric.update(
        torch.tensor([1.0, 2.0, 3.0, float("nan")]),
        zeros,
        torch.zeros(4, dtype=torch.bool),
        "heldout",
        torch.tensor([True, False, False, True]),
    )
    metric.update(
        torch.tensor([0.1, 0.2, 0.3, 0.4]),
        zeros,
        torch.ones(4, dtype=torch.bool),
        "generated",
        torch.tensor([True, True, True, False]),
    )
    out = metric.compute()
    assert out["near_copy_share"].item() == 0.75
    assert out["heldout_near_copy_share"].item() == pytest.approx(1 / 3)  # NaN distance left out
    assert out["copy_fraction"].item() == 1.0
    with pytest.raises(ValueError, match="near"):
        metric.update(
            torch.ones(2),
            torch.zeros(2, dtype=torch.long),
            torch.ones(2),
            "generated",
            torch.ones(3),
        )
