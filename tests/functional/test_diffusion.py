"""Noising, prediction-type conversions and per-sample losses against float64 numpy and
against diffusers' own scheduler arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_memwatch.functional import (
    convert_prediction,
    denoising_losses,
    epsilon_from_prediction,
    prediction_target,
    q_sample,
    x0_from_prediction,
)
from lightning_memwatch.functional.diffusion import canonical_prediction, check_alphas_cumprod

PREDICTIONS = ("epsilon", "sample", "v_prediction")


def schedule(steps: int = 50) -> torch.Tensor:
    betas = np.linspace(1e-3, 0.05, steps)
    return torch.from_numpy(np.cumprod(1 - betas))


def numpy_targets(x0, eps, abar):
    """eps, x0 and v (Salimans & Ho 2022, sec. 4) in float64 numpy, abar per sample."""
    a = abar.reshape(-1, *([1] * (x0.ndim - 1)))
    return {"epsilon": eps, "sample": x0, "v_prediction": np.sqrt(a) * eps - np.sqrt(1 - a) * x0}


@pytest.fixture
def batch(rng):
    abar = schedule()
    x0 = rng.standard_normal((6, 1, 3, 3))
    eps = rng.standard_normal((6, 1, 3, 3))
    t = rng.integers(0, len(abar), 6)
    return abar, x0, eps, t


def test_q_sample_is_ho_et_al_eq_4(batch):
    abar, x0, eps, t = batch
    a = abar.numpy()[t].reshape(-1, 1, 1, 1)
    expected = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    got = q_sample(torch.from_numpy(x0), torch.from_numpy(t), torch.from_numpy(eps), abar)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_each_prediction_gives_back_x0_and_eps_and_converts_to_the_others(batch, prediction):
    abar, x0, eps, t = batch
    targets = numpy_targets(x0, eps, abar.numpy()[t])
    x0_t, eps_t, t_t = torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t)
    x_t = q_sample(x0_t, t_t, eps_t, abar)
    output = torch.from_numpy(targets[prediction])
    np.testing.assert_allclose(
        prediction_target(x0_t, eps_t, t_t, abar, prediction).numpy(), targets[prediction]
    )
    np.testing.assert_allclose(
        x0_from_prediction(output, x_t, t_t, abar, prediction).numpy(), x0, atol=1e-10
    )
    np.testing.assert_allclose(
        epsilon_from_prediction(output, x_t, t_t, abar, prediction).numpy(), eps, atol=1e-10
    )
    for other in PREDICTIONS:
        got = convert_prediction(output, x_t, t_t, abar, prediction, other)
        np.testing.assert_allclose(got.numpy(), targets[other], atol=1e-10)


def test_noise_and_velocity_equal_diffusers_scheduler(batch):
    from diffusers import DDPMScheduler

    _, x0, eps, t = batch
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    abar = scheduler.alphas_cumprod
    x0_t, eps_t, t_t = (torch.from_numpy(v).float() for v in (x0, eps, t * 10))
    t_t = t_t.long()
    np.testing.assert_allclose(
        q_sample(x0_t, t_t, eps_t, abar).numpy(),
        scheduler.add_noise(x0_t, eps_t, t_t).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        prediction_target(x0_t, eps_t, t_t, abar, "v_prediction").numpy(),
        scheduler.get_velocity(x0_t, eps_t, t_t).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("prediction", [*PREDICTIONS, "pred_noise", "pred_x0", "pred_v"])
def test_denoising_losses_equal_the_mean_squared_error_in_numpy(rng, prediction):
    abar = schedule()
    weight = rng.standard_normal((9, 9)) / 3

    def denoiser(x_t, t):  # any deterministic map of (x_t, t)
        flat = x_t.reshape(len(x_t), -1) @ torch.from_numpy(weight).to(x_t)
        return (flat * (1 + t[:, None].to(x_t) / 50)).reshape(x_t.shape)

    x0 = rng.standard_normal((5, 1, 3, 3))
    timesteps = [0, 7, 30, 49]
    noise = rng.standard_normal((5, len(timesteps), 1, 3, 3))
    got = denoising_losses(
        denoiser, torch.from_numpy(x0), torch.from_numpy(noise), timesteps, abar, prediction
    )
    expected = np.empty((5, len(timesteps)))
    for k, t in enumerate(timesteps):
        a = float(abar[t])
        x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise[:, k]
        output = (x_t.reshape(5, -1) @ weight) * (1 + t / 50)
        target = numpy_targets(x0, noise[:, k], np.full(5, a))[canonical_prediction(prediction)]
        expected[:, k] = ((output - target.reshape(5, -1)) ** 2).mean(axis=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_denoising_losses_are_nan_where_the_output_is_not_finite():
    abar = schedule()
    broken = lambda x_t, t: torch.where(t[:, None, None, None] > 10, torch.nan, x_t)  # noqa: E731
    losses = denoising_losses(
        broken, torch.zeros(2, 1, 2, 2), torch.ones(2, 2, 1, 2, 2), [5, 20], abar, "sample"
    )
    assert torch.isfinite(losses[:, 0]).all() and torch.isnan(losses[:, 1]).all()


def test_bad_schedules_predictions_and_noise_shapes_fail():
    with pytest.raises(ValueError, match="1-D"):
        check_alphas_cumprod(torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        check_alphas_cumprod(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="prediction type"):
        canonical_prediction("flow")
    with pytest.raises(ValueError, match="one draw per sample"):
        denoising_losses(
            lambda x, t: x, torch.zeros(2, 3), torch.zeros(2, 3), [1], schedule(), "sample"
        )
