"""The latent-decoder example: a 4 x 8 x 8 latent map, the monitors on the module's own
``encode`` and ``decoder``."""

from __future__ import annotations

import math

import torch

from tests.examples.conftest import load_example

ld = load_example("latent_decoder")


def test_the_monitors_decode_flat_latents_through_the_map_valued_decoder():
    """The monitors' decoder takes flat ``(B, 256)`` latents and gives what the module's decoder
    gives on the same latents as ``(B, 4, 8, 8)`` maps; their encoder the posterior mean
    flattened."""
    model = ld.LatentAutoencoder(width=16).eval()
    geometry = ld.monitors(probe_size=4, every=1)[0]
    geometry.latent_shape = ld.LATENT  # as recorded when training starts
    x, z = torch.rand(3, 1, 32, 32), torch.randn(3, 256)
    with torch.no_grad():
        assert torch.equal(geometry.decoder(model)(z), model.decoder(z.view(3, 4, 8, 8)))
        q = geometry.encoder(model)(x)
        assert torch.equal(q.mean, model.encode(x).mean.flatten(1))


def test_kl_term_matches_torch_distributions():
    model = ld.LatentAutoencoder(width=16, kl_weight=1.0)
    x = torch.rand(2, 1, 32, 32)
    q = model.encode(x)
    prior = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros_like(q.mean), torch.ones_like(q.mean)), 3
    )
    kl = torch.distributions.kl_divergence(q, prior)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(q.mean.shape, generator=g)
    recon = (model.decoder(q.mean + q.stddev * noise) - x).square().flatten(1).sum(1)
    expected = (recon + kl).mean()
    assert torch.allclose(model.loss(x, torch.Generator().manual_seed(0)), expected, rtol=1e-5)


def test_fast_run_measures_finite_keys(capsys, tmp_path):
    values = ld.main(["--fast", "--log-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| memwatch/spectrum/log_volume |" in out
    assert values["measurements"] == 2
    for key in (
        "memwatch/spectrum/log_volume/gap",
        "memwatch/spectrum/local_rank/gap",
        "memwatch/recovery/mre/train",
        "memwatch/recovery/mre_gap",
        "memwatch/spectrum/seconds",
        "memwatch/recovery/seconds",
    ):
        assert math.isfinite(values[key]), key
    assert values["memwatch/spectrum/intrinsic_dim/train"] <= 32  # top_k=32 of m = 256
    assert "latent 4 x 8 x 8 = 256 (recorded from the encoder)" in out
