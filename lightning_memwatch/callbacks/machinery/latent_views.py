"""Latents of any shape, measured through their flat view.

An encoder may give flat ``(B, m)`` latents, latent maps ``(B, C, H, W)`` (the autoencoder of a
latent diffusion model, a VQ model) or any ``(B, *shape)`` latents, and the decoder takes the
same. Every measurement works on the flat view ``(B, m)``, ``m = prod(shape)``: the shape is
recorded when training starts (from the encoder's output, else from ``latent_dim``), the
encoder's latents and posterior are flattened row by row, and flat latents are reshaped to
``(B, *shape)`` before the user's decoder is called (:func:`unflatten`). The reshape keeps every
coordinate in place, so the decoder's Jacobian, its singular values, the recovered latents, the
prior ``N(0, I)`` (per element) and a diagonal posterior's density are exactly those of the same
model written with flat latents.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from lightning_memwatch.functional.checks import check_int

#: A latent size as the monitors take it: ``m`` (flat latents) or a shape such as ``(4, 8, 8)``.
LatentSize = int | tuple[int, ...]


def latent_shape(value: Any, argument: str = "latent_dim") -> tuple[int, ...]:
    """The per-sample latent shape that ``value`` gives: ``(m,)`` for an integer ``m``, the tuple
    itself for a tuple (or list, as a YAML config gives) of positive integers.

    Example::

        >>> latent_shape(16), latent_shape([4, 2, 2])
        ((16,), (4, 2, 2))
    """
    if isinstance(value, (tuple, list)) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            return tuple(int(v) for v in value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return (check_int(argument, value),)
    raise ValueError(
        f"Expected `{argument}` to be a positive integer or a tuple of them (the shape of a "
        f"latent map, such as (4, 8, 8)) but got {value!r}"
    )


def describe(shape: tuple[int, ...]) -> str:
    """``"16"`` for flat latents, ``"(4, 2, 2)"`` for a map: how messages name a latent size."""
    return str(shape[0]) if len(shape) == 1 else str(shape)


def unflatten(z: Tensor, shape: tuple[int, ...] | None) -> Tensor:
    """Flat latents ``(..., m)`` as ``(..., *shape)``; unchanged for flat shapes (``(m,)``)."""
    if shape is None or len(shape) <= 1:
        return z
    return z.reshape(*z.shape[:-1], *shape)


def latent_candidate(output: Any) -> Tensor | None:
    """The tensor that holds the latents in an encoder's output, whatever its shape: a
    distribution's mean, a tuple's first element, the tensor itself; ``None`` if there is none."""
    mean = getattr(output, "mean", None) if not isinstance(output, Tensor) else None
    if isinstance(mean, Tensor):
        return mean
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output if isinstance(output, Tensor) else None


def latents_of(output: Any) -> Tensor:
    """The flat latent batch ``(B, m)`` in an encoder's output: a tensor, a tuple's first element
    or a distribution's mean (:func:`latent_candidate`), each sample's latents flattened."""
    latents = latent_candidate(output)
    if latents is None or latents.ndim < 2:
        raise ValueError(
            "Expected the encoder to return a (B, m) latent batch (or (B, ...) latent maps), a "
            "tuple whose first element is one, or a distribution with such a mean, but got "
            f"{type(output).__name__}"
        )
    return latents.flatten(1)


def _diagonal_gaussian(value: Any) -> tuple[Tensor, Tensor] | None:
    """``(mean, std)`` of a diagonal Gaussian: a torch ``Normal`` (in ``Independent`` or not),
    or an object with a tensor ``mean`` and ``std``, ``var`` or ``logvar`` (diffusers'
    ``DiagonalGaussianDistribution``); ``None`` for anything else."""
    base = value.base_dist if isinstance(value, Independent) else value
    if isinstance(base, Normal):
        return base.loc, base.scale
    mean = getattr(value, "mean", None)
    if isinstance(value, Distribution) or not isinstance(mean, Tensor):
        return None
    std, var, logvar = (getattr(value, name, None) for name in ("std", "var", "logvar"))
    if isinstance(std, Tensor):
        return mean, std
    if isinstance(var, Tensor):
        return mean, var.sqrt()
    if isinstance(logvar, Tensor):
        return mean, (0.5 * logvar).exp()
    return None


def flat_posterior(value: Any) -> Distribution | None:
    """A diagonal Gaussian over latents of any shape as ``Independent(Normal(mean, std), 1)``
    over the flat ``(B, m)`` latents (the same density: the coordinates are independent);
    ``None`` when ``value`` is no diagonal Gaussian, or a torch one over flat latents already
    (kept as it is).

    Example::

        >>> import torch
        >>> q = Independent(Normal(torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)), 3)
        >>> flat = flat_posterior(q)
        >>> flat.batch_shape, flat.event_shape
        (torch.Size([2]), torch.Size([16]))
    """
    parts = _diagonal_gaussian(value)
    if parts is None or (isinstance(value, Distribution) and parts[0].ndim <= 2):
        return None
    mean, std = parts
    std = std.expand_as(mean)
    base = Normal(mean.flatten(1), std.flatten(1), validate_args=False)
    return Independent(base, 1, validate_args=False)


def flatten_latents(value: Any) -> tuple[Any, tuple[int, ...] | None]:
    """An encoder's (selected) output on the flat view, and the per-sample shape of its latents
    (``None`` when it holds none): a tensor ``(B, *shape)`` flattened to ``(B, m)``; a tuple's
    tensors of the batch (``(mean, log_var)`` maps) each flattened; a diagonal Gaussian as one
    over flat latents (:func:`flat_posterior`); anything else as it is."""
    candidate = latent_candidate(value)
    shape = tuple(candidate.shape[1:]) if candidate is not None and candidate.ndim >= 2 else None
    posterior = flat_posterior(value)
    if posterior is not None:
        return posterior, shape
    if isinstance(value, Tensor):
        return (value.flatten(1) if value.ndim > 2 else value), shape
    if isinstance(value, (tuple, list)) and candidate is not None and candidate.ndim > 2:
        rows = len(candidate)
        flat = [
            v.flatten(1) if isinstance(v, Tensor) and v.ndim > 2 and len(v) == rows else v
            for v in value
        ]
        return (list(flat) if isinstance(value, list) else tuple(flat)), shape
    return value, shape


def numel(shape: tuple[int, ...]) -> int:
    """``m``: the values of one sample's latents."""
    return math.prod(shape)
