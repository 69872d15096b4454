"""Spectrum and density metrics against numpy/scipy on the same per-sample values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_memwatch.metrics import DensityGap, SpectrumGap
from tests.devices import DEVICE, on_device


def reference(train: np.ndarray, val: np.ndarray) -> dict[str, float]:
    """Float64 numpy/scipy: means of the finite values, their difference, KS p, NaN count."""
    ft, fv = train[np.isfinite(train)], val[np.isfinite(val)]
    return {
        "train": ft.mean(),
        "val": fv.mean(),
        "gap": ft.mean() - fv.mean(),
        "ks_pvalue": stats.ks_2samp(ft, fv).pvalue,
        "nonfinite": (~np.isfinite(train)).sum() + (~np.isfinite(val)).sum(),
    }


def assert_matches(out: dict, name: str, train: np.ndarray, val: np.ndarray) -> None:
    for key, value in reference(train, val).items():
        assert out[f"{name}/{key}"].item() == pytest.approx(value, rel=1e-10, abs=1e-12), key


def density_scores(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    dip = rng.normal(shift, 1.0, size=n)
    decay = rng.normal(-shift, 1.0, size=(n, 2))
    dip[::7] = np.nan
    decay[3, 1] = np.inf
    return dip, decay


def test_density_gap_matches_numpy(rng):
    metric = DensityGap().to(DEVICE)
    dip_t, decay_t = density_scores(rng, 40, 1.0)
    dip_v, decay_v = density_scores(rng, 30, 0.0)
    metric.update("train", dip=on_device(dip_t[:25]), decay=on_device(decay_t[:25]))
    metric.update("train", dip=on_device(dip_t[25:]), decay=on_device(decay_t[25:]))
    metric.update("val", dip=on_device(dip_v), decay=on_device(decay_v))
    out = metric.compute()
    assert_matches(out, "dip", dip_t, dip_v)
    assert_matches(out, "decay", decay_t.mean(axis=1), decay_v.mean(axis=1))
    assert out["dip/nonfinite"].item() == 6 + 5  # every 7th of 40 and of 30
    assert out["decay/nonfinite"].item() == 2


def test_spectrum_gap_matches_numpy(rng):
    s_train = np.sort(rng.uniform(0.5, 3.0, size=(20, 4)))[:, ::-1].copy()
    s_val = np.sort(rng.uniform(0.1, 1.0, size=(15, 4)))[:, ::-1].copy()
    s_val[2, 3] = 1e-9  # one degenerate direction: k = 3 there
    s_train[5] = np.nan
    metric = SpectrumGap(rtol=1e-4).to(DEVICE)
    metric.update(on_device(s_train), "train")
    metric.update(on_device(s_val), "val")
    out = metric.compute()

    def descriptors(s: np.ndarray) -> dict[str, np.ndarray]:
        k = (s > 1e-4 * s[:, :1]).sum(axis=1).astype(float)
        k[~np.isfinite(s).all(axis=1)] = np.nan
        kept = np.arange(s.shape[1]) < np.nan_to_num(k, nan=0)[:, None]
        p = s / s.sum(axis=1, keepdims=True) + 1e-30
        last = np.take_along_axis(s, np.nan_to_num(k, nan=1).astype(int)[:, None] - 1, axis=1)
        return {
            "log_volume": np.where(
                np.isfinite(k), np.where(kept, np.log(s), 0).sum(axis=1), np.nan
            ),
            "local_rank": np.exp(-(p * np.log(p)).sum(axis=1)),
            "intrinsic_dim": k,
            "log_condition": np.where(np.isfinite(k), np.log(s[:, 0] / last[:, 0]), np.nan),
        }

    ref_train, ref_val = descriptors(s_train), descriptors(s_val)
    for name in SpectrumGap.descriptors:
        assert_matches(out, name, ref_train[name], ref_val[name])
    assert out["intrinsic_dim/val"].item() == pytest.approx((14 * 4 + 3) / 15)


def test_merged_states_equal_one_metric_fed_everything(rng):
    """What DDP does: each rank's `cat` states are gathered, then computed once."""
    values = {split: density_scores(rng, 24, 0.5) for split in ("train", "val")}
    whole, rank0, rank1 = (DensityGap().to(DEVICE) for _ in range(3))
    for split, (dip, decay) in values.items():
        whole.update(split, dip=on_device(dip), decay=on_device(decay))
        rank0.update(split, dip=on_device(dip[:10]), decay=on_device(decay[:10]))
        rank1.update(split, dip=on_device(dip[10:]), decay=on_device(decay[10:]))
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), whole.compute()
    assert merged.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], equal_nan=True)


def test_empty_split_gives_nan_not_an_error():
    metric = DensityGap().to(DEVICE)
    metric.update("train", dip=on_device([1.0, 2.0]))
    out = metric.compute()
    assert out["dip/train"].item() == 1.5
    assert torch.isnan(out["dip/val"]) and torch.isnan(out["dip/gap"])
    assert torch.isnan(out["dip/ks_pvalue"]) and torch.isnan(out["decay/train"])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="split"):
        DensityGap().update("test", dip=torch.zeros(3))
    with pytest.raises(ValueError, match="dip"):
        DensityGap().update("train", dip=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="rtol"):
        SpectrumGap(rtol=2.0)
    with pytest.raises(ValueError, match="singular values"):
        SpectrumGap().update(torch.zeros(3), "train")
    with pytest.raises(ValueError, match="name"):
        DensityGap().samples("psi", "train")


def test_scalars_fold_the_nonfinite_counts_into_the_largest_and_reset():
    metric = DensityGap().to(DEVICE)
    nan = float("nan")
    metric.update("train", dip=on_device([1.0, nan]), decay=on_device([nan, nan, -1.0]))
    metric.update("val", dip=on_device([0.5]), decay=on_device([-2.0]))
    expected = {k: v for k, v in metric.compute().items() if not k.endswith("/nonfinite")}
    got = metric.scalars()
    assert got.pop("nonfinite").item() == 2.0  # dip drops 1 value, decay 2
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, equal_nan=True)
    assert metric.samples("dip", "train").numel() == 0  # reset


def test_density_parts_and_unreached_share_against_numpy():
    from lightning_memwatch.metrics import DensityGap

    rng = np.random.default_rng(1)
    metric, want = DensityGap().to(DEVICE), {}
    for split in ("train", "val"):
        prior, volume = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
        unreached = rng.random((5, 2)) < 0.3
        decay = np.where(unreached, np.nan, prior + volume)
        metric.update(
            split,
            decay=on_device(decay),
            decay_terms=tuple(map(on_device, (prior, volume, unreached))),
        )
        want[split] = (prior.mean(1).mean(), unreached.any(1).mean(), np.nanmean(decay.mean(1)))
    out = metric.compute()
    for split in ("train", "val"):
        assert out[f"decay/prior/{split}"].item() == pytest.approx(want[split][0])
        assert out[f"decay/unreached/{split}"].item() == pytest.approx(want[split][1])
        assert out[f"decay/{split}"].item() == pytest.approx(want[split][2])
