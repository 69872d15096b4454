"""GeometryMonitor's density family: the dip and decay parts, the prior and where recovered
latents are measured, against closed forms and scipy."""

from __future__ import annotations

import functools
import math

import lightning as L
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memwatch.callbacks import GeometryMonitor
from tests.conftest import FixedDecoderModule, digits_tensors, quiet_trainer


class Linear(nn.Module):
    """``f(z) = A z``: the Jacobian is ``A`` everywhere, so psi is the same at every latent and
    the dip is its prior part alone, ``-|z_0 - z_1|^2 / 4`` (N(0, I), exact midpoint)."""

    def __init__(self, m: int, n: int, gain: float = 1.0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("a", gain * torch.randn(n, m, generator=generator))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.a.T).reshape(-1, 1, 8, 8)


def fit(model, monitor, n_train=32, n_val=32):
    train, val = digits_tensors(n_train=n_train, n_val=n_val)
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=[monitor], max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(
        model,
        DataLoader(TensorDataset(train), batch_size=16),
        DataLoader(TensorDataset(val), batch_size=16),
    )
    return {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("memwatch/")}


def test_the_dip_of_a_linear_decoder_is_its_prior_part_alone():
    cb = GeometryMonitor(probe_size=16, max_overhead=math.inf, radii=(0.05, 0.1))
    got = fit(FixedDecoderModule(Linear(6, 64), 6), cb)
    for split in ("train", "val"):
        assert got[f"memwatch/density/dip/volume/{split}"] == pytest.approx(0.0, abs=1e-6)
        assert got[f"memwatch/density/dip/{split}"] == pytest.approx(
            got[f"memwatch/density/dip/prior/{split}"], rel=1e-9, abs=1e-9
        )
        # decay = prior part + volume part, and a linear map's volume part is 0 as well
        assert got[f"memwatch/density/decay/volume/{split}"] == pytest.approx(0.0, abs=1e-6)
        assert got[f"memwatch/density/decay/unreached/{split}"] == 0.0


def recovered_norms(model, prior):
    cb = GeometryMonitor(
        probe_size=16, max_overhead=math.inf, families=("spectrum",), radii=(0.1,), prior=prior
    )
    fit(model, cb)
    rows = torch.arange(16)
    z = cb.probe_latents(cb_trainer(cb), model, cb.inputs["train"], "train", rows)
    return z.double().norm(dim=1).cpu().numpy()


def cb_trainer(cb):
    """A stand-in trainer for ``probe_latents`` outside a fit: one process, epoch 0."""

    class Trainer:
        world_size, current_epoch, callbacks = 1, 0, [cb]

    return Trainer()


def test_recovered_latents_far_outside_the_prior_are_measured_in_its_typical_set():
    """A generator with a tiny gain can only reach the digits from latents of norm ~100, far
    outside N(0, I_8) (norm 0.8 to 5.3 at chi's 0.001 and 0.999 quantiles): the geometry is
    measured at latents moved into that range, where the generator is sampled."""
    model = FixedDecoderModule(Linear(8, 64, gain=0.003), 8)
    norms = recovered_norms(model, "normal")
    low, high = stats.chi.ppf([0.001, 0.999], df=8)
    assert np.all(norms >= low - 1e-6) and np.all(norms <= high + 1e-6)
    assert np.any(np.isclose(norms, high, rtol=1e-6))  # they were outside, and were moved
    sphere = recovered_norms(FixedDecoderModule(Linear(8, 64, gain=0.003), 8), "sphere")
    assert np.allclose(sphere, 1.0, rtol=1e-6)


def test_a_prior_spec_that_is_not_one_fails_at_construction():
    with pytest.raises(ValueError, match="prior"):
        GeometryMonitor(prior="laplace")


class Chosen(nn.Module):
    """``f(z) = A z`` with chosen singular values (a gap after the 4th)."""

    S = (5.0, 4.0, 3.0, 2.0, 0.1, 0.05)

    def __init__(self) -> None:
        super().__init__()
        from tests.conftest import linear_map

        a = linear_map(64, 6, np.array(self.S), np.random.default_rng(0))
        self.register_buffer("a", torch.from_numpy(a).float())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.a.T).reshape(-1, 1, 8, 8)


@pytest.mark.parametrize("top_k", [None, 4])
def test_top_k_spectrum_is_the_top_k_of_a_linear_maps_chosen_values(top_k):
    cb = GeometryMonitor(
        probe_size=16, max_overhead=math.inf, radii=(0.05, 0.1), top_k=top_k, families=("spectrum",)
    )
    got = fit(FixedDecoderModule(Chosen(), 6), cb)
    kept = Chosen.S if top_k is None else Chosen.S[:top_k]
    assert got["memwatch/spectrum/log_volume/train"] == pytest.approx(np.log(kept).sum(), rel=1e-4)
    assert got["memwatch/spectrum/intrinsic_dim/train"] == len(kept)
    assert cb.spectrum_size(6, 64) == top_k


def test_top_k_auto_is_exact_below_512_latents_and_32_from_there():
    cb = GeometryMonitor()
    assert cb.spectrum_size(128, 784) is None and cb.spectrum_size(512, 784) == 32
    assert cb.spectrum_size(4096, 16) is None  # 32 is not below min(m, n) = 16
    with pytest.raises(ValueError, match="top_k"):
        GeometryMonitor(top_k=0)


@functools.cache
def flat_memorizer(device: torch.device):
    """The three-centre memorizer of the density tests on ``device`` (built once per device)."""
    from tests.functional.test_density import centres_on_a_line

    return centres_on_a_line(tau=2.0, dtype=torch.float32, n=64, device=device)[0]


class FlatMemorizer(FixedDecoderModule):
    """The three-centre memorizer of the density tests (centres 10 apart on a line, flat around
    each) as a decoder to 8 x 8 images, on the device of its latents, with a fixed linear
    encoder that spreads the digits over all three centres' flat regions and their
    crossfades."""

    def __init__(self) -> None:
        super().__init__(nn.Unflatten(1, (1, 8, 8)), 2)
        generator = torch.Generator().manual_seed(3)
        self.register_buffer("w", torch.randn(64, 2, generator=generator) * torch.tensor([3, 0.2]))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(flat_memorizer(z.device)(z))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w - 5.0


def test_unreached_share_per_split_equals_a_dense_float64_count():
    """``memwatch/density/decay/unreached/{train,val}`` is the share of probe points whose
    line misses some radius after the extended search: the count of a dense float64 evaluation
    of the same lines (:func:`tests.functional.test_density.dense_unreached`) at the encoder's
    latents. Observed: 22 of 32 lines unreached in each split."""
    from lightning_memwatch.functional.priors import search_bound
    from tests.functional.test_density import centres_on_a_line, dense_unreached

    model = FlatMemorizer()
    radii = (0.5, 1.0)
    cb = GeometryMonitor(
        "decode", "encode", probe_size=32, max_overhead=math.inf, radii=radii, prior="normal"
    )
    got = fit(model, cb, n_train=32, n_val=32)
    f64, _, _, jacobian = centres_on_a_line(tau=2.0, n=64)
    for split in ("train", "val"):
        with torch.no_grad():
            z = model.encode(cb.inputs[split]).double().numpy()
        expected, ends, _ = dense_unreached(f64, jacobian, z, radii, search_bound(None, 2))
        assert np.abs(ends.min(axis=1)[:, None] / np.asarray(radii) - 1).min() > 0.02
        share = expected.any(axis=1).mean()
        print(f"{split}: {expected.any(axis=1).sum()} of {len(z)} unreached")
        assert 0.1 < share < 0.9
        assert got[f"memwatch/density/decay/unreached/{split}"] == pytest.approx(share, abs=1e-12)


def numpy_auto_radii(x: np.ndarray) -> np.ndarray:
    """``(0.25, 0.5)`` times numpy's median over samples of the L2 distance to the nearest
    other sample, inputs flattened, float64."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    dist = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    return np.array([0.25, 0.5]) * np.median(dist.min(axis=1))


def auto_fit(tmp_path, ckpt_path=None, max_epochs=1):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.conftest import make_autoencoder

    train, val = digits_tensors(n_train=48, n_val=32)
    L.seed_everything(0, verbose=False)
    cb = GeometryMonitor(
        encoder="encode", probe_size=16, max_overhead=math.inf, radii="auto", families=("density",)
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    trainer = quiet_trainer(
        callbacks=[cb, ckpt],
        max_epochs=max_epochs,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
    )
    trainer.fit(
        make_autoencoder(dropout=0.0),
        DataLoader(TensorDataset(train), batch_size=16),
        DataLoader(TensorDataset(val), batch_size=16),
        ckpt_path=ckpt_path,
    )
    got = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("memwatch/")}
    return cb, got


def test_auto_radii_from_the_train_probe_are_logged_and_survive_resume(tmp_path):
    """``radii="auto"``: ``0.25`` and ``0.5`` times the median nearest-neighbour distance of
    the train probe (numpy), logged as ``memwatch/density/radius_{0,1}``, saved in the
    checkpoint: a run resumed from one whose saved radii were replaced measures with those,
    not with radii drawn again from its probe."""
    cb, got = auto_fit(tmp_path / "a")
    expected = numpy_auto_radii(cb.inputs["train"].numpy())
    np.testing.assert_allclose(cb.radii, expected, rtol=1e-12)
    assert [got[f"memwatch/density/radius_{i}"] for i in range(2)] == pytest.approx(expected)
    assert {f"memwatch/density/radius_{i}" for i in range(2)} <= cb.logged_keys
    assert np.isfinite(got["memwatch/density/decay/train"])
    (path,) = (tmp_path / "a").glob("*.ckpt")
    checkpoint = torch.load(path, weights_only=False)
    assert tuple(checkpoint["callbacks"][cb.state_key]["radii"]) == cb.radii
    checkpoint["callbacks"][cb.state_key]["radii"] = (0.125, 0.375)
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    resumed, got = auto_fit(tmp_path / "b", tmp_path / "edited.ckpt", max_epochs=2)
    assert resumed.radii == (0.125, 0.375)
    assert got["memwatch/density/radius_0"] == pytest.approx(0.125)
    # given radii are the user's: a checkpoint's do not replace them
    explicit = GeometryMonitor(radii=(0.5, 1.0))
    explicit.load_state_dict({**resumed.state_dict(), "radii": (0.125, 0.375)})
    assert explicit.radii == (0.5, 1.0)


def test_auto_radii_and_bad_radii_fail_with_what_was_given():
    from lightning_memwatch.functional.decay import nearest_neighbour_radii

    x = np.random.default_rng(0).standard_normal((7, 1, 3, 3))
    got = nearest_neighbour_radii(torch.from_numpy(x).float())
    np.testing.assert_allclose(got, numpy_auto_radii(x), rtol=1e-6)
    with pytest.raises(ValueError, match=r"two distinct training samples.*4 samples with 1"):
        nearest_neighbour_radii(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"two distinct training samples.*1 samples with 1"):
        nearest_neighbour_radii(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"'auto'.*'automatic'"):
        GeometryMonitor(radii="automatic")


@pytest.mark.parametrize("top_k", [None, 4])
def test_top_k_density_of_a_linear_map_is_its_closed_form(top_k):
    """With ``top_k`` the density family takes the spectrum pass's top-k values and vector (a
    top-k ``s_start`` beside exact midpoint spectra used to fail): the decay is
    ``-r / s_1^2`` along the top singular direction, mean over ``r``, and psi is the same
    everywhere (volume parts 0), exact or top-k."""
    radii = (0.05, 0.1)
    cb = GeometryMonitor(probe_size=16, max_overhead=math.inf, radii=radii, top_k=top_k)
    got = fit(FixedDecoderModule(Chosen(), 6), cb)
    expected = np.mean([-r / Chosen.S[0] ** 2 for r in radii])
    for split in ("train", "val"):
        assert got[f"memwatch/density/decay/{split}"] == pytest.approx(expected, rel=1e-3)
        assert got[f"memwatch/density/decay/volume/{split}"] == pytest.approx(0.0, abs=1e-5)
        assert got[f"memwatch/density/dip/volume/{split}"] == pytest.approx(0.0, abs=1e-5)
        assert got[f"memwatch/density/dip/{split}"] < 0
