"""The singular spectrum of a denoiser's x0-estimate, ``x_t -> x0_hat(x_t, t)``, at noised points.

The seeds' descriptors (psi, local rank, intrinsic dimension, log condition:
:mod:`~lightning_memwatch.functional.spectrum`) read off the Jacobian
``J = d x0_hat / d x_t`` (``D x D``) at noised probe points and a small timestep: Humayun et al.
(2024), sec. 3 and Fig. 2 compute them along the denoising steps of a DDPM. For the ideal
(minimum mean squared error) denoiser Tweedie's formula gives
``J = sqrt(abar_t) / (1 - abar_t) Cov[x_0 | x_t]``: symmetric, positive semi-definite, and of
low rank where the posterior concentrates on few training samples; a denoiser that memorizes
collapses its Jacobian's effective rank (Kadkhodaie, Guth, Simoncelli & Mallat, ICLR 2024,
arXiv:2310.02557, sec. 3). For Gaussian data ``N(mu, C)`` the ideal x0-estimate is linear,
``E[x_0 | x_t] = mu + sqrt(abar) C (abar C + (1 - abar) I)^{-1} (x_t - sqrt(abar) mu)``, with
singular values ``sqrt(abar) lambda_i / (abar lambda_i + 1 - abar)`` (``lambda_i`` those of
``C``): the closed form the tests check against.

When ``D`` is large, ``projection = k`` restricts ``J`` to a fixed random ``k``-dimensional
orthonormal subspace ``Q`` (``D x k``) of inputs: the singular values of ``J Q``, from ``k``
Jacobian-vector products per point instead of ``D``. A denoiser with an op that has no
forward-mode rule is differentiated in reverse mode instead (the whole ``J``, then ``J Q``:
:mod:`~lightning_memwatch.functional.autodiff`). Humayun et al. (2024), sec. 3 project the
outputs instead (``Q^T J``, 120 dimensions for Stable Diffusion); for a symmetric ``J``, as the
ideal denoiser's is, the two have the same singular values, and the input side runs in forward
mode like the rest of the package.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_memwatch.functional.autodiff import fallback_attempts, with_fallback
from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.diffusion import (
    Denoiser,
    timestep_batch,
    x0_from_prediction,
)
from lightning_memwatch.functional.jacobian import (
    DEFAULT_CHUNK_BYTES,
    as_plain_tensor,
    differentiable_context,
    finite_outputs,
    map_chunks,
    push_block,
)
from lightning_memwatch.functional.reverse import reverse_jacobian
from lightning_memwatch.functional.spectrum import gram_singular_values, singular_values


def x0_estimator(
    denoiser: Denoiser, t: int, alphas_cumprod: Tensor, prediction: str
) -> Callable[[Tensor], Tensor]:
    """``x_t -> x0_hat(x_t, t)``: the denoiser at timestep ``t`` turned into its estimate of
    ``x_0`` (:func:`~lightning_memwatch.functional.diffusion.x0_from_prediction`).

    Example::

        >>> abar = torch.tensor([0.64])
        >>> estimate = x0_estimator(lambda x_t, t: torch.zeros_like(x_t), 0, abar, "epsilon")
        >>> estimate(torch.tensor([[0.8]]))  # x_t / sqrt(abar) when eps_hat = 0
        tensor([[1.]])
    """

    def estimate(x_t: Tensor) -> Tensor:
        steps = timestep_batch(t, len(x_t), x_t.device)
        return x0_from_prediction(denoiser(x_t, steps), x_t, steps, alphas_cumprod, prediction)

    return estimate


def random_orthonormal(dim: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """A ``(dim, k)`` float64 matrix with orthonormal columns, Haar-distributed: the Q factor
    of a Gaussian matrix, signs fixed by R's diagonal. ``generator`` (CPU) seeds it.

    Example::

        >>> q = random_orthonormal(5, 2, torch.Generator().manual_seed(0))
        >>> torch.allclose(q.T @ q, torch.eye(2, dtype=torch.float64))
        True
    """
    check_int("dim", dim)
    check_int("k", k)
    if k > dim:
        raise ValueError(f"Expected `k` at most `dim` ({dim}) but got {k}")
    gaussian = torch.randn(dim, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0)


def x0_singular_values(
    estimate: Callable[[Tensor], Tensor],
    x_t: Tensor,
    *,
    projection: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Singular values of ``J = d estimate / d x_t`` at each point of ``x_t`` (see the module
    docstring), float64, descending.

    Args:
        estimate: ``(B, ...) -> (B, ...)``, e.g. :func:`x0_estimator`.
        x_t: the points ``(B, ...)``.
        projection: ``None`` for the whole ``D x D`` Jacobian (``D`` Jacobian-vector products a
            point, :func:`~lightning_memwatch.functional.singular_values`), or a ``(D, k)``
            matrix ``Q`` with orthonormal columns (:func:`random_orthonormal`): the singular
            values of ``J Q``, ``k`` products a point.
        chunk_size: points per forward-mode pass (``None``: sized to a memory budget).

    Returns:
        ``(B, D)`` or ``(B, k)``; a NaN row where the estimate is not finite.

    Example::

        >>> scale = torch.tensor([3.0, 2.0, 1.0])
        >>> x0_singular_values(lambda x: x * scale, torch.ones(2, 3))
        tensor([[3., 2., 1.],
                [3., 2., 1.]], dtype=torch.float64)
    """
    shape = x_t.shape[1:]

    def flat(z: Tensor) -> Tensor:
        return estimate(z.reshape(-1, *shape)).reshape(len(z), -1)

    z = as_plain_tensor(x_t.reshape(len(x_t), -1))
    if projection is None:
        return singular_values(flat, z, chunk_size=chunk_size)
    if projection.ndim != 2 or projection.shape[0] != z.shape[1]:
        raise ValueError(
            f"Expected `projection` of shape ({z.shape[1]}, k) but got {tuple(projection.shape)}"
        )
    block = projection.to(z.device, torch.float64)
    per_point = z.shape[1] * block.shape[1] * z.element_size()
    size = chunk_size or max(1, min(len(z), DEFAULT_CHUNK_BYTES // max(per_point, 1)))

    def reverse_block(chunk: Tensor, mode: str) -> tuple[Tensor, Tensor]:
        outputs, jac = reverse_jacobian(flat, chunk, mode, budget_bytes=DEFAULT_CHUNK_BYTES)
        return outputs, (jac @ block.to(jac.dtype)).permute(2, 0, 1)  # J Q as (k, b, D)

    def chunk_values(chunk: Tensor) -> Tensor:
        attempts = fallback_attempts(
            lambda: push_block(flat, chunk, block),
            lambda mode: reverse_block(chunk, mode),
        )
        (outputs, columns), _ = with_fallback(estimate, chunk, attempts)  # (b, D), (k, b, D)
        jac = columns.permute(1, 2, 0)  # (b, D, k)
        finite = finite_outputs(outputs)
        return torch.where(finite[:, None], gram_singular_values(jac), torch.nan)

    with differentiable_context():
        return map_chunks(chunk_values, z, size)
