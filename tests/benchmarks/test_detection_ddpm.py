"""``benchmarks/detection_ddpm.py``'s ground truth: its DDIM sampler and denoising loss against
closed forms, and the near-copy share against numpy on deduplicated training digits."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def ddpm(benchmarks_path):
    return importlib.import_module("detection_ddpm")


def dirac_denoiser(abar, point):
    """The exact epsilon of data at one point ``x*``:
    ``(x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)``."""

    def net(x_t, t):
        a = abar[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * point) / (1 - a).sqrt()

    return net


def test_ddim_of_a_dirac_returns_its_point(ddpm):
    """Every DDIM step of the exact denoiser keeps ``x0_hat = x*``: the samples are ``x*``."""
    abar = ddpm.linear_alphas_cumprod(200)
    point = torch.rand(1, 1, 8, 8) * 1.6 - 0.8
    samples = ddpm.ddim_samples(dirac_denoiser(abar, point), abar, 16, 20)
    assert torch.allclose(samples, point.expand(16, -1, -1, -1), atol=1e-4)
    again = ddpm.ddim_samples(dirac_denoiser(abar, point * 0), abar, 16, 20, seed=0)
    assert torch.allclose(again, torch.zeros_like(again), atol=1e-4)


def test_schedule_is_the_rescaled_linear_one(ddpm):
    betas = np.linspace(1e-4 * 5, 0.02 * 5, 200)
    expected = np.cumprod(1 - betas)
    assert np.allclose(ddpm.linear_alphas_cumprod(200).numpy(), expected, rtol=1e-5)


def test_denoising_loss_of_the_zero_denoiser_is_the_noise_power(ddpm):
    """``net = 0``: the loss is ``mean(eps^2)`` of the draws, recomputed in float64 with the same
    generator and draw order."""
    abar = ddpm.linear_alphas_cumprod(200)
    images = torch.rand(10, 1, 8, 8)
    loss = ddpm.denoising_loss(lambda x, t: torch.zeros_like(x), abar, images, 4)
    eps = torch.randn((40, 1, 8, 8), generator=torch.Generator().manual_seed(1)).double()
    assert loss == pytest.approx(float((eps**2).mean()), rel=1e-5)


def test_copy_truth_counts_copies_of_distinct_digits(ddpm):
    """Samples next to a training digit that the training set holds twice are near-copies (the
    digits are deduplicated first: with the repeat, d1/d2 would be 1); numpy's d1/d2 < 1/3 on
    the distinct digits gives the same share."""
    train = torch.rand(6, 1, 8, 8)
    train = torch.cat([train, train[:2]])  # two digits twice
    val = torch.rand(5, 1, 8, 8)
    abar = ddpm.linear_alphas_cumprod(200)
    model = torch.nn.Module()
    model.alphas_cumprod = abar
    target = (train[1:2] * 0.98 + 0.01) * 2 - 1  # 0.01-0.02 from the digit, inside [-1, 1]
    model.net = dirac_denoiser(abar, target)
    data = SimpleNamespace(train_images=train, val_images=val)
    truth = ddpm.copy_truth(model, data, True)
    samples = ((ddpm.ddim_samples(model.net, abar, 64, 5) + 1) / 2).flatten(1).double().numpy()
    distinct = np.unique(train.flatten(1).double().numpy(), axis=0)
    d = np.sort(np.linalg.norm(samples[:, None] - distinct[None], axis=-1), axis=1)
    assert truth["copy_share"] == float((d[:, 0] / d[:, 1] < 1 / 3).mean()) == 1.0
    repeated = np.sort(np.linalg.norm(samples[:, None] - train.flatten(1).numpy()[None], axis=-1))
    assert (repeated[:, 0] / repeated[:, 1] > 0.9).all()  # what the repeat would have given
