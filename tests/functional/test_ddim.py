"""The built-in DDIM sampler against diffusers' DDIMScheduler (eta 0), and its clipping against a
numpy loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_memwatch.functional import ddim_sample, ddim_timesteps


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize(("steps", "count"), [(1000, 10), (1000, 3), (200, 7), (50, 50)])
def test_timesteps_equal_diffusers(spacing, steps, count):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=steps, timestep_spacing=spacing)
    scheduler.set_timesteps(count)
    assert ddim_timesteps(steps, count, spacing) == scheduler.timesteps.tolist()


def small_unet(attention: bool):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D" if attention else "DownBlock2D"),
        up_block_types=("AttnUpBlock2D" if attention else "UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
        add_attention=attention,
    ).eval()


@pytest.mark.parametrize(
    ("prediction", "spacing", "attention"),
    [
        ("epsilon", "trailing", False),
        ("v_prediction", "leading", True),
        ("sample", "trailing", True),
    ],
)
def test_samples_equal_diffusers_ddim_scheduler_on_the_same_unet_and_noise(
    prediction, spacing, attention
):
    """Steps divide T, so diffusers' ``t - T // S`` is the next timestep of the subsequence."""
    from diffusers import DDIMScheduler

    unet = small_unet(attention)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        prediction_type=prediction,
        clip_sample=False,
        timestep_spacing=spacing,
    )
    scheduler.set_timesteps(10)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = noise.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    ours = ddim_sample(
        lambda x_t, t: unet(x_t, t).sample,
        noise,
        scheduler.alphas_cumprod,
        prediction,
        steps=10,
        spacing=spacing,
    )
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_clipping_rederives_eps_as_a_numpy_loop_does(rng):
    abar = np.cumprod(1 - np.linspace(1e-3, 0.05, 100))
    weight = rng.standard_normal((4, 4))

    def numpy_eps(x, t):
        return np.tanh(x @ weight) * (1 + t / 100)

    noise = rng.standard_normal((3, 4)) * 3
    times = ddim_timesteps(100, 5)
    x = noise.copy()
    for i, t in enumerate(times):
        a = abar[t]
        x0 = np.clip((x - np.sqrt(1 - a) * numpy_eps(x, t)) / np.sqrt(a), -1, 1)
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        a_prev = abar[times[i + 1]] if i + 1 < len(times) else 1.0
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    w = torch.from_numpy(weight)
    ours = ddim_sample(
        lambda x_t, t: torch.tanh(x_t @ w) * (1 + t[:, None].double() / 100),
        torch.from_numpy(noise),
        torch.from_numpy(abar),
        "epsilon",
        steps=5,
        clip=(-1.0, 1.0),
    )
    np.testing.assert_allclose(ours.numpy(), x, rtol=1e-12)
    assert ours.abs().max() <= 1.0


def test_the_sampler_is_deterministic_and_leaves_the_global_rng_alone():
    abar = torch.linspace(0.99, 0.01, 20)
    state = torch.random.get_rng_state()
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    first = ddim_sample(lambda x, t: 0.5 * x, noise, abar, "epsilon", steps=4)
    assert torch.equal(first, ddim_sample(lambda x, t: 0.5 * x, noise, abar, "epsilon", steps=4))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_bad_steps_and_spacings_fail():
    with pytest.raises(ValueError, match="at most the number of training timesteps"):
        ddim_timesteps(10, 11)
    with pytest.raises(ValueError, match="spacing"):
        ddim_timesteps(10, 2, "linspace")
