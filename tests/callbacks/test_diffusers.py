"""Real diffusers models attach with no glue (issue 22): a tiny ``AutoencoderKL`` and ``VQModel``
(random init, no download) wrapped in a LightningModule as a user would, the monitors given
``decoder="vae.decode", encoder="vae.encode"`` and nothing else about the model. Their outputs
(``AutoencoderKLOutput.latent_dist``, ``DecoderOutput.sample`` beside a VQ model's
``commit_loss``, ``VQEncoderOutput.latents``) are read without arguments, their ``(4, 2, 2)``
latent maps measured through the flat view; the values are checked against float64 numpy /
scipy computations on the diffusers models called directly.

The autoencoders keep diffusers' default attention block in the middle of the encoder and the
decoder: the spectrum is measured through it (SDPA's math kernel, or the reverse-mode fallback).
The VQ model is watched by recovery only: its quantizer snaps latents to a codebook.
"""

from __future__ import annotations

import copy
import math

import lightning as L
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel, VQModel
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.autoencoders.vq_model import VQEncoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from scipy import special
from torch import nn

from lightning_memwatch import GeometryMonitor, LikelihoodMonitor, RecoveryMonitor
from lightning_memwatch.callbacks.machinery.adapters import (
    Site,
    adapt_decoder,
    adapt_encoder,
    select_output,
)
from tests.conftest import digits_loaders, quiet_trainer

#: Three down blocks take 8 x 8 digits to 2 x 2: latent maps (4, 2, 2), m = 16.
TINY = {
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (8, 8, 8),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "layers_per_block": 1,
    "sample_size": 8,
}
MAP = (4, 2, 2)
PROBE = 8
SPLITS = ("train", "val")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class DiffusersVAE(L.LightningModule):
    """A latent diffusion model's first stage as a user writes it: ``self.vae`` is diffusers'
    ``AutoencoderKL``, trained on reconstruction plus a light KL."""

    def __init__(self) -> None:
        super().__init__()
        self.vae = AutoencoderKL(**TINY)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        q = self.vae.encode(x).latent_dist
        recon = self.vae.decode(q.sample()).sample
        return nn.functional.mse_loss(recon, x) + 1e-4 * q.kl().mean()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class DiffusersVQ(DiffusersVAE):
    """The same with diffusers' ``VQModel`` as ``self.vae``."""

    def __init__(self) -> None:
        L.LightningModule.__init__(self)
        self.vae = VQModel(**TINY, num_vq_embeddings=16, vq_embed_dim=MAP[0])

    def training_step(self, batch, batch_idx):
        (x,) = batch
        out = self.vae.decode(self.vae.encode(x).latents)
        return nn.functional.mse_loss(out.sample, x) + out.commit_loss


def fit(callbacks, model):
    L.seed_everything(0, verbose=False)
    train, val = digits_loaders()
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=1)
    trainer.fit(model, train, val)
    return trainer


def test_the_output_classes_are_read_without_arguments():
    """``AutoencoderKLOutput`` (a ``BaseOutput``, an OrderedDict) gives its ``latent_dist``,
    a diagonal Gaussian over maps, as one over flat latents; ``DecoderOutput`` with two tensors
    its ``sample``; ``VQEncoderOutput`` its ``latents``, flattened."""
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, *MAP), torch.randn(3, *MAP)
    dist = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    site = Site("GeometryMonitor", "encoder", "vae.encode")
    encoder = adapt_encoder(lambda x: AutoencoderKLOutput(latent_dist=dist), None, site)
    q = encoder(None)
    assert encoder.latent_shape == MAP
    assert q.batch_shape == (3,) and q.event_shape == (16,)
    assert torch.equal(q.mean, mean.flatten(1))
    assert torch.equal(q.stddev, dist.std.flatten(1))
    z = torch.randn(5, 3, 16)
    want = torch.distributions.Normal(mean.flatten(1), dist.std.flatten(1)).log_prob(z).sum(-1)
    torch.testing.assert_close(q.log_prob(z), want)

    latents = torch.randn(3, *MAP)
    vq_encoder = adapt_encoder(lambda x: VQEncoderOutput(latents=latents), None, site)
    assert torch.equal(vq_encoder(None), latents.flatten(1)) and vq_encoder.latent_shape == MAP

    sample = torch.randn(3, 1, 8, 8)
    decoded = DecoderOutput(sample=sample, commit_loss=torch.tensor(0.5))
    assert list(decoded.keys()) == ["sample", "commit_loss"]  # two tensors: the known name
    decoder_site = Site("GeometryMonitor", "decoder", "vae.decode")
    assert select_output(decoded, None, decoder_site) is sample
    seen = []
    decoder = adapt_decoder(lambda z: seen.append(z) or decoded, None, decoder_site, MAP)
    assert decoder(torch.arange(32.0).view(2, 16)) is sample
    assert torch.equal(seen[0], torch.arange(32.0).view(2, *MAP))  # flat latents, reshaped


def _float64(model):
    return copy.deepcopy(model.vae).double().eval()


def _log_volume(vae, z, rtol=1e-4):
    """Mean over samples of ``sum_{s_i > rtol s_1} log s_i``, the singular values of the float64
    Jacobian of ``z -> vae.decode(z).sample`` at each flat latent (numpy SVD)."""
    values = []
    for row in z:

        def decode(flat):
            return vae.decode(flat.view(1, *MAP)).sample.flatten()

        jac = torch.autograd.functional.jacobian(decode, row.double()).numpy()
        s = np.linalg.svd(jac, compute_uv=False)
        values.append(np.log(s[s > rtol * s[0]]).sum())
    return float(np.mean(values))


def test_autoencoder_kl_through_geometry_recovery_and_likelihood():
    """The logged means equal float64 references: the spectrum's log-volume from numpy
    singular values, the median reconstruction error at the encoder's latents (``steps=0``), the
    importance-sampled Gaussian ``log p(x)`` from scipy on the monitor's documented draws."""
    common = {"decoder": "vae.decode", "encoder": "vae.encode", "probe_size": PROBE}
    common["max_overhead"] = math.inf
    geometry = GeometryMonitor(**common, families=("spectrum",))
    recovery = RecoveryMonitor(**common, steps=0)
    likelihood = LikelihoodMonitor(**common, likelihood="gaussian", num_samples=8)
    model = DiffusersVAE()
    trainer = fit([geometry, recovery, likelihood], model)
    logged = trainer.callback_metrics
    assert geometry.latent_shape == recovery.latent_shape == likelihood.latent_shape == MAP

    vae = _float64(model)
    generator = torch.Generator().manual_seed(likelihood.seed + 7919)  # the documented draws
    for split in SPLITS:
        x = geometry.inputs[split].double()
        with torch.no_grad():
            q = vae.encode(x).latent_dist
            mean, std = q.mean.flatten(1), q.std.flatten(1)
            recon = vae.decode(mean.view(-1, *MAP)).sample
        want = _log_volume(vae, mean)
        got = logged[f"memwatch/spectrum/log_volume/{split}"].item()
        assert got == pytest.approx(want, rel=1e-4), split

        errors = (recon - x).square().flatten(1).mean(1).numpy()
        got = logged[f"memwatch/recovery/mre/{split}"].item()
        assert got == pytest.approx(np.median(errors), rel=1e-5), split  # Webster's MRE

        eps = torch.randn(8, PROBE, 16, generator=generator).double()
        z = mean + std * eps  # (N, P, m)
        with torch.no_grad():
            out = vae.decode(z.reshape(-1, *MAP)).sample.reshape(8, PROBE, -1).numpy()
        xs, zn, eps_n = x.flatten(1).numpy(), z.numpy(), eps.numpy()
        log_lik = (-0.5 * (xs - out) ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * zn**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_q = (-0.5 * eps_n**2 - np.log(std.numpy()) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_px = special.logsumexp(log_lik + log_prior - log_q, axis=0) - math.log(8)
        got = logged[f"memwatch/likelihood/{split}"].item()
        assert got == pytest.approx(log_px.mean(), rel=1e-5), split


def test_vq_model_decoder_output_gives_its_sample_to_recovery():
    """``VQModel.decode`` returns ``DecoderOutput(sample=, commit_loss=)``: two tensors, of
    which the monitor reads ``sample``: the median reconstruction error at the encoder's latents
    (``steps=0``) against float64, and recovery through the quantizer (reverse mode) runs."""
    common = {"decoder": "vae.decode", "encoder": "vae.encode", "probe_size": PROBE}
    encoded = RecoveryMonitor(**common, steps=0, max_overhead=math.inf)
    model = DiffusersVQ()
    trainer = fit([encoded], model)
    assert encoded.latent_shape == MAP
    vae = _float64(model)
    for split in SPLITS:
        x = encoded.inputs[split].double()
        with torch.no_grad():
            recon = vae.decode(vae.encode(x).latents).sample
        want = np.median((recon - x).square().flatten(1).mean(1).numpy())  # Webster's MRE
        got = trainer.callback_metrics[f"memwatch/recovery/mre/{split}"].item()
        assert got == pytest.approx(want, rel=1e-5), split

    recovered = RecoveryMonitor(**common, steps=2, warm_steps=2, max_overhead=math.inf)
    trainer = fit([recovered], DiffusersVQ())
    for split in SPLITS:  # L-BFGS keeps each sample's best: never worse than the encoder's
        value = trainer.callback_metrics[f"memwatch/recovery/mre/{split}"].item()
        assert math.isfinite(value) and value <= want * 1.5


def test_a_unet_named_as_the_decoder_points_to_diffusion_monitor():
    class Pixels(DiffusersVAE):
        def __init__(self) -> None:
            super().__init__()
            self.unet = UNet2DModel(
                sample_size=8,
                in_channels=1,
                out_channels=1,
                block_out_channels=(8, 8),
                down_block_types=("DownBlock2D",) * 2,
                up_block_types=("UpBlock2D",) * 2,
                norm_num_groups=8,
                layers_per_block=1,
            )
            self.latent_dim = 64

    with pytest.raises(ValueError, match=r"decoder `unet`.*is a diffusers UNet2DModel") as e:
        fit([GeometryMonitor(decoder="unet", probe_size=PROBE)], Pixels())
    assert "DiffusionMonitor(denoiser=..., schedule=...)" in str(e.value)
    assert "`vae.decode`" in str(e.value)
