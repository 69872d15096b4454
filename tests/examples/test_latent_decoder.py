"""The latent-decoder example: a 4 x 8 x 8 latent map, the monitors through flat wrappers."""

from __future__ import annotations

import math

import torch

from tests.examples.conftest import load_example

ld = load_example("latent_decoder")


def test_flat_wrappers_round_trip_the_latent_map():
    model = ld.LatentAutoencoder(width=16)
    x = torch.rand(3, 1, 32, 32)
    z = model.encode_flat(x)
    assert z.shape == (3, 256)
    assert torch.equal(z.view(3, 4, 8, 8), model.encode(x).mean)
    out = model.decode_flat(z)
    assert out.shape == (3, 1, 32, 32)
    assert torch.equal(out, model.decoder(z.view(3, 4, 8, 8)))


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
    assert "| memwatch/spectrum/log_volume |" in capsys.readouterr().out
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


def test_map_valued_latents_fail_at_setup_naming_the_encoder_and_the_shape(capsys, tmp_path):
    values = ld.main(["--fast", "--spatial", "--log-dir", str(tmp_path)])
    message = values["setup_error"]
    assert "encoder `encode`" in message and "latent maps of shape (4, 8, 8)" in message
    assert "decoder(z.view(-1, 4, 8, 8))" in message
