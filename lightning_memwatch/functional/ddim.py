"""A deterministic DDIM sampler (Song, Meng & Ermon 2021, arXiv:2010.02502) for any denoiser.

DDIM runs the reverse process on a subsequence ``tau_1 > tau_2 > ... > tau_S`` of the training
timesteps. With ``eta = 0`` (no fresh noise) each step is (Song et al., eq. 12, ``sigma_t = 0``)::

    x0_hat = x0_from_prediction(f(x_t, t), x_t, t)                     ("predicted x_0")
    eps_hat = epsilon_from_prediction(f(x_t, t), x_t, t)
    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat      ("direction to x_t")

``abar_prev`` being ``abar`` at the next timestep of the subsequence, and ``1`` after the last one,
so the sampler returns the last ``x0_hat`` (diffusers' ``set_alpha_to_one=True``). The map from the
starting noise ``x_T`` to the sample is deterministic: the same noise gives the same sample at
every call, so a curve over epochs moves with the model only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.diffusion import (
    Denoiser,
    canonical_prediction,
    check_alphas_cumprod,
    epsilon_from_prediction,
    timestep_batch,
    x0_from_prediction,
)

#: How the ``S`` sampling timesteps are spread over ``[0, T)``.
SPACINGS = ("trailing", "leading")


def ddim_timesteps(num_train_timesteps: int, steps: int, spacing: str = "trailing") -> list[int]:
    """The decreasing sampling timesteps of a ``steps``-step DDIM on ``T`` training timesteps.

    - ``"trailing"``: ``round(T - i T / S) - 1`` for ``i = 0 .. S-1``: the first step is at
      ``T - 1``, where the model sees pure noise (Lin, Liu, Li & Yang 2024, arXiv:2305.08891,
      sec. 3.3, table 2);
    - ``"leading"``: ``(S - 1 - i) floor(T / S)``, Song et al.'s original subsequence, ending at 0
      (diffusers' default ``timestep_spacing`` with ``steps_offset=0``).

    The two equal diffusers' ``DDIMScheduler.set_timesteps`` of the same spacing.

    Example::

        >>> ddim_timesteps(1000, 4)
        [999, 749, 499, 249]
        >>> ddim_timesteps(1000, 4, "leading")
        [750, 500, 250, 0]
    """
    check_int("num_train_timesteps", num_train_timesteps)
    check_int("steps", steps)
    if steps > num_train_timesteps:
        raise ValueError(
            f"Expected `steps` at most the number of training timesteps ({num_train_timesteps}) "
            f"but got {steps}"
        )
    if spacing == "trailing":
        ratio = num_train_timesteps / steps
        grid = torch.arange(num_train_timesteps, 0, -ratio, dtype=torch.float64)
        return [int(t) - 1 for t in torch.round(grid).tolist()[:steps]]
    if spacing == "leading":
        ratio = num_train_timesteps // steps
        return [i * ratio for i in reversed(range(steps))]
    raise ValueError(f"Expected `spacing` to be one of {SPACINGS} but got {spacing!r}")


def ddim_sample(
    denoiser: Denoiser,
    noise: Tensor,
    alphas_cumprod: Tensor,
    prediction: str,
    *,
    steps: int = 10,
    spacing: str = "trailing",
    clip: tuple[float, float] | None = None,
) -> Tensor:
    """Samples of a deterministic (``eta = 0``) DDIM from the starting noise ``x_T = noise``.

    Song et al. 2021, eq. 12 with ``sigma_t = 0`` (see the module docstring), on the timesteps
    of :func:`ddim_timesteps`. With ``clip = (low, high)`` each ``x0_hat`` is clamped to the data
    range and ``eps_hat`` re-derived from the clamped ``x0_hat``
    (``(x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)``, as denoising_diffusion_pytorch's
    ``ddim_sample`` does); ``None`` (default) uses the prediction as it is. Runs under
    ``torch.no_grad()``; the denoiser is called ``steps`` times on the whole batch.

    Args:
        denoiser: ``(x_t, t) -> prediction``, ``t`` a ``(B,)`` long tensor.
        noise: the starting points ``x_T``, ``(B, ...)``: their dtype and device are the samples'.
        alphas_cumprod: ``abar`` ``(T,)``.
        prediction: the denoiser's prediction type (``epsilon``, ``sample``, ``v_prediction``).
        steps: sampling steps ``S``.
        spacing: ``"trailing"`` or ``"leading"`` (:func:`ddim_timesteps`).
        clip: the data range to clamp ``x0_hat`` to, or ``None``.

    Returns:
        ``(B, ...)`` samples, in the scale the model is trained on.

    Example::

        >>> abar = torch.linspace(0.99, 0.01, 100)
        >>> oracle = lambda x_t, t: torch.full_like(x_t, 0.5)  # always predicts x_0 = 0.5
        >>> ddim_sample(oracle, torch.randn(2, 3), abar, "sample", steps=5)
        tensor([[0.5000, 0.5000, 0.5000],
                [0.5000, 0.5000, 0.5000]])
    """
    prediction = canonical_prediction(prediction)
    abar = check_alphas_cumprod(alphas_cumprod)
    times = ddim_timesteps(len(abar), steps, spacing)
    x = noise
    with torch.no_grad():
        for i, step in enumerate(times):
            t = timestep_batch(step, len(x), x.device)
            output = denoiser(x, t)
            x0 = x0_from_prediction(output, x, t, abar, prediction)
            if clip is not None:
                x0 = x0.clamp(*clip)
                eps = epsilon_from_prediction(x0, x, t, abar, "sample")
            else:
                eps = epsilon_from_prediction(output, x, t, abar, prediction)
            abar_prev = abar[times[i + 1]] if i + 1 < len(times) else abar.new_ones(())
            x = abar_prev.sqrt().to(x) * x0 + (1 - abar_prev).sqrt().to(x) * eps
    return x
