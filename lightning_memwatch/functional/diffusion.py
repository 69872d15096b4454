"""The Gaussian diffusion of a DDPM: noising, the three prediction types and the per-sample loss.

Notation (Ho et al. 2020, arXiv:2006.11239, sec. 2): a variance schedule ``beta_1 .. beta_T``,
``alpha_t = 1 - beta_t`` and ``abar_t = prod_{s <= t} alpha_s`` (``alphas_cumprod`` in diffusers
and denoising_diffusion_pytorch, indexed by the integer timestep ``t = 0 .. T - 1``). The forward
process has the closed form (Ho et al., eq. 4)::

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,    eps ~ N(0, I).

A denoiser ``f(x_t, t)`` predicts one of three equivalent targets (``prediction``):

- ``"epsilon"``: the noise ``eps`` (Ho et al., eq. 14, the "simple" loss);
- ``"sample"``: the clean sample ``x_0``;
- ``"v_prediction"``: ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022,
  arXiv:2202.00512, sec. 4 and appendix D).

Given ``x_t`` any one determines the other two (the identities of :func:`x0_from_prediction`
and :func:`epsilon_from_prediction`); diffusers calls them ``prediction_type`` ``"epsilon"``,
``"sample"``, ``"v_prediction"``, denoising_diffusion_pytorch ``objective`` ``"pred_noise"``,
``"pred_x0"``, ``"pred_v"`` (:data:`PREDICTION_ALIASES`).

Coefficients are taken from ``alphas_cumprod`` in float64 and cast to the data's dtype, so a
float32 schedule buffer and a float64 one give the same result to float32 precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: The canonical prediction types (diffusers' ``prediction_type`` values).
PREDICTIONS = ("epsilon", "sample", "v_prediction")
#: Other names of the prediction types: denoising_diffusion_pytorch's ``objective`` values.
PREDICTION_ALIASES = {"pred_noise": "epsilon", "pred_x0": "sample", "pred_v": "v_prediction"}

#: ``denoiser(x_t, t) -> prediction``, ``t`` a ``(B,)`` long tensor of timesteps.
Denoiser = Callable[[Tensor, Tensor], Tensor]


def canonical_prediction(prediction: str) -> str:
    """The canonical name (:data:`PREDICTIONS`) of a prediction type or of one of its
    :data:`PREDICTION_ALIASES`.

    Example::

        >>> canonical_prediction("pred_v")
        'v_prediction'
    """
    if prediction in PREDICTIONS:
        return prediction
    if prediction in PREDICTION_ALIASES:
        return PREDICTION_ALIASES[prediction]
    known = (*PREDICTIONS, *PREDICTION_ALIASES)
    raise ValueError(f"Expected a prediction type, one of {known}, but got {prediction!r}")


def check_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """``alphas_cumprod`` as a float64 ``(T,)`` tensor, after checking it is one: a 1-D
    floating-point tensor of values in ``(0, 1]``."""
    if not isinstance(alphas_cumprod, Tensor) or alphas_cumprod.ndim != 1:
        got = (
            tuple(alphas_cumprod.shape)
            if isinstance(alphas_cumprod, Tensor)
            else type(alphas_cumprod).__name__
        )
        raise ValueError(f"Expected `alphas_cumprod` to be a 1-D (T,) tensor but got {got}")
    if not alphas_cumprod.is_floating_point() or len(alphas_cumprod) == 0:
        raise ValueError(
            f"Expected `alphas_cumprod` to be a non-empty floating-point tensor but got "
            f"{alphas_cumprod.dtype} of length {len(alphas_cumprod)}"
        )
    values = alphas_cumprod.detach().to(torch.float64)
    if not bool(((values > 0) & (values <= 1)).all()):
        raise ValueError(
            "Expected `alphas_cumprod` in (0, 1] (the cumulative products of 1 - beta_t) but got "
            f"values from {values.min().item():.3g} to {values.max().item():.3g}"
        )
    return values


def _coefficients(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """``sqrt(abar_t)`` and ``sqrt(1 - abar_t)`` per sample, shaped to broadcast over ``like``
    ``(B, ...)``, in ``like``'s dtype and device."""
    abar = check_alphas_cumprod(alphas_cumprod).to(like.device)[t.to(like.device, torch.long)]
    shape = (-1,) + (1,) * (like.ndim - 1)
    signal, noise = abar.sqrt().reshape(shape), (1 - abar).sqrt().reshape(shape)
    return signal.to(like.dtype), noise.to(like.dtype)


def timestep_batch(t: int | Tensor, batch: int, device: torch.device | str) -> Tensor:
    """``t`` as a ``(batch,)`` long tensor of timesteps (an int is repeated)."""
    t = torch.as_tensor(t, dtype=torch.long, device=device)
    return t.expand(batch) if t.ndim == 0 else t


def q_sample(x0: Tensor, t: int | Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Ho et al. 2020, eq. 4).

    Args:
        x0: clean samples ``(B, ...)``.
        t: an integer timestep or a ``(B,)`` tensor of them, in ``[0, T)``.
        noise: ``eps``, the shape of ``x0``.
        alphas_cumprod: ``abar`` ``(T,)``.

    Example::

        >>> abar = torch.tensor([0.64, 0.36])
        >>> q_sample(torch.ones(1, 2), 1, torch.ones(1, 2), abar)  # 0.6 + 0.8
        tensor([[1.4000, 1.4000]])
    """
    signal, sigma = _coefficients(alphas_cumprod, timestep_batch(t, len(x0), x0.device), x0)
    return signal * x0 + sigma * noise


def prediction_target(
    x0: Tensor, noise: Tensor, t: int | Tensor, alphas_cumprod: Tensor, prediction: str
) -> Tensor:
    """What a denoiser of type ``prediction`` is trained to output at ``x_t``: ``eps``,
    ``x_0``, or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022, sec. 4).

    Example::

        >>> abar = torch.tensor([0.64])
        >>> prediction_target(torch.ones(1, 1), torch.zeros(1, 1), 0, abar, "v_prediction")
        tensor([[-0.6000]])
    """
    prediction = canonical_prediction(prediction)
    if prediction == "epsilon":
        return noise
    if prediction == "sample":
        return x0
    signal, sigma = _coefficients(alphas_cumprod, timestep_batch(t, len(x0), x0.device), x0)
    return signal * noise - sigma * x0


def x0_from_prediction(
    output: Tensor, x_t: Tensor, t: int | Tensor, alphas_cumprod: Tensor, prediction: str
) -> Tensor:
    """The estimate of ``x_0`` that a prediction of type ``prediction`` at ``x_t`` implies:

    - ``epsilon``: ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (Ho et al. 2020, eq. 4
      solved for ``x_0``; Song et al. 2021, arXiv:2010.02502, eq. 12, "predicted x_0");
    - ``sample``: the output itself;
    - ``v_prediction``: ``sqrt(abar_t) x_t - sqrt(1 - abar_t) v`` (Salimans & Ho 2022, sec. 4).

    Example::

        >>> abar = torch.tensor([0.64])
        >>> x0, eps = torch.tensor([[1.0]]), torch.tensor([[0.5]])
        >>> x_t = q_sample(x0, 0, eps, abar)
        >>> v = prediction_target(x0, eps, 0, abar, "v_prediction")
        >>> x0_from_prediction(v, x_t, 0, abar, "v_prediction")
        tensor([[1.0000]])
    """
    prediction = canonical_prediction(prediction)
    if prediction == "sample":
        return output
    signal, sigma = _coefficients(alphas_cumprod, timestep_batch(t, len(x_t), x_t.device), x_t)
    if prediction == "epsilon":
        return (x_t - sigma * output) / signal
    return signal * x_t - sigma * output


def epsilon_from_prediction(
    output: Tensor, x_t: Tensor, t: int | Tensor, alphas_cumprod: Tensor, prediction: str
) -> Tensor:
    """The estimate of ``eps`` that a prediction of type ``prediction`` at ``x_t`` implies:

    - ``epsilon``: the output itself;
    - ``sample``: ``(x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)`` (Ho et al. 2020, eq. 4
      solved for ``eps``);
    - ``v_prediction``: ``sqrt(1 - abar_t) x_t + sqrt(abar_t) v`` (Salimans & Ho 2022, sec. 4).

    Example::

        >>> abar = torch.tensor([0.64])
        >>> x0, eps = torch.tensor([[1.0]]), torch.tensor([[0.5]])
        >>> x_t = q_sample(x0, 0, eps, abar)
        >>> epsilon_from_prediction(x0, x_t, 0, abar, "sample")
        tensor([[0.5000]])
    """
    prediction = canonical_prediction(prediction)
    if prediction == "epsilon":
        return output
    signal, sigma = _coefficients(alphas_cumprod, timestep_batch(t, len(x_t), x_t.device), x_t)
    if prediction == "sample":
        return (x_t - signal * output) / sigma
    return sigma * x_t + signal * output


def convert_prediction(
    output: Tensor,
    x_t: Tensor,
    t: int | Tensor,
    alphas_cumprod: Tensor,
    prediction: str,
    to: str,
) -> Tensor:
    """A prediction of type ``prediction`` at ``x_t`` expressed as one of type ``to``: the
    ``x_0`` and ``eps`` it implies (:func:`x0_from_prediction`, :func:`epsilon_from_prediction`)
    put into :func:`prediction_target`.

    Example::

        >>> abar = torch.tensor([0.64])
        >>> x_t = torch.tensor([[1.1]])  # 0.8 x_0 + 0.6 eps with x_0 = 1, eps = 0.5
        >>> convert_prediction(torch.tensor([[1.0]]), x_t, 0, abar, "sample", "epsilon")
        tensor([[0.5000]])
    """
    x0 = x0_from_prediction(output, x_t, t, alphas_cumprod, prediction)
    eps = epsilon_from_prediction(output, x_t, t, alphas_cumprod, prediction)
    return prediction_target(x0, eps, t, alphas_cumprod, to)


def denoising_losses(
    denoiser: Denoiser,
    x0: Tensor,
    noise: Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: Tensor,
    prediction: str,
) -> Tensor:
    """Per-sample denoising losses at a grid of timesteps, in the model's own parametrization.

    ``L_k(x_0) = mean_d (f(x_{t_k}, t_k) - target_k)_d^2`` with ``x_{t_k}`` from
    :func:`q_sample` with the given noise and ``target_k`` from :func:`prediction_target`: for
    ``epsilon`` Ho et al. 2020's ``L_simple`` (eq. 14) at fixed ``t`` and ``eps``, for
    ``sample`` and ``v_prediction`` the same mean squared error on their targets (unweighted:
    denoising_diffusion_pytorch's ``loss_weight`` is a constant at fixed ``t``).

    All ``K`` timesteps go through the denoiser in one batch of ``B K`` samples.

    Args:
        denoiser: ``(x_t, t) -> prediction`` (``t`` a ``(B K,)`` long tensor).
        x0: clean samples ``(B, ...)``, in the scale the model is trained on.
        noise: ``(B, K, ...)``: the noise of sample ``b`` at timestep ``k``.
        timesteps: the ``K`` integer timesteps ``t_k`` in ``[0, T)``.
        alphas_cumprod: ``abar`` ``(T,)``.
        prediction: the denoiser's prediction type (:data:`PREDICTIONS` or an alias).

    Returns:
        ``(B, K)`` float64 losses; NaN where the denoiser's output is not finite.

    Example::

        >>> abar = torch.tensor([0.64, 0.36])
        >>> x0, eps = torch.zeros(2, 3), torch.ones(2, 2, 3)
        >>> perfect = lambda x_t, t: x_t / (1 - abar[t]).sqrt()[:, None]  # eps when x0 = 0
        >>> denoising_losses(perfect, x0, eps, [0, 1], abar, "epsilon")
        tensor([[0., 0.],
                [0., 0.]], dtype=torch.float64)
    """
    timesteps = [int(t) for t in timesteps]
    batch, count = len(x0), len(timesteps)
    if noise.shape != (batch, count, *x0.shape[1:]):
        raise ValueError(
            f"Expected `noise` of shape {(batch, count, *x0.shape[1:])} (one draw per sample "
            f"and timestep) but got {tuple(noise.shape)}"
        )
    t = torch.tensor(timesteps, dtype=torch.long, device=x0.device).repeat(batch)
    x0_rep = x0.repeat_interleave(count, dim=0)
    eps = noise.reshape(batch * count, *x0.shape[1:]).to(x0)
    x_t = q_sample(x0_rep, t, eps, alphas_cumprod)
    target = prediction_target(x0_rep, eps, t, alphas_cumprod, prediction)
    output = denoiser(x_t, t)
    errors = (output.to(torch.float64) - target.to(torch.float64)).square()
    return errors.reshape(batch, count, -1).mean(dim=-1)
