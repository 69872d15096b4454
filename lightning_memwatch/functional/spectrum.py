"""The singular spectrum of a decoder's Jacobian and the descriptors read off it.

``s_1 >= s_2 >= ... >= s_r`` (``r = min(n, m)``) are the singular values of ``J = df/dz``
(Feiszli (2017), sec. 2.1). They are the square roots of the eigenvalues of
the Gram matrix (the metric tensor ``J^T J`` of Ramirez et al. (poster)), which
is formed and solved in float64 so that small singular values survive a float32 Jacobian.
Per-point values that cannot be computed are NaN (``intrinsic_dim``: ``-1``).

The descriptors are defined on whatever spectrum they are given. On the ``k`` largest values
only (``singular_values(..., top_k=k)``) they describe the top-``k`` part of ``J``: ``psi`` sums
the logs of at most ``k`` values, ``nu`` is the entropy rank of the top ``k`` alone (at most
``k``), the intrinsic dimension is capped at ``k``, and the condition number is that of the
non-degenerate values among the top ``k``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memwatch.functional.jacobian import Decoder, map_jacobian_chunks
from lightning_memwatch.functional.topk import top_singular_values


def _finite_gram(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Gram matrices with the non-finite ones replaced by ``I`` (so LAPACK never sees a NaN),
    and the mask of the finite ones."""
    finite = torch.isfinite(gram).all(dim=-1).all(dim=-1)
    if not bool(finite.all()):
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        gram = torch.where(finite[:, None, None], gram, eye)
    return gram, finite


def gram_singular_values(jac: Tensor) -> Tensor:
    """Singular values of a batch of matrices from their float64 Gram matrices.

    ``s = sqrt(max(eigvalsh(G), 0))`` with ``G = J^T J`` (or ``J J^T`` when ``n < m``, the
    smaller of the two), descending. A matrix with a non-finite entry gives a NaN row.

    Args:
        jac: ``(B, n, m)`` Jacobians.

    Returns:
        ``(B, min(n, m))`` float64.
    """
    jt = jac.mT.to(torch.float64)  # (B, m, n): n innermost for the layout jacobian() makes
    n, m = jac.shape[-2:]
    gram, finite = _finite_gram(jt @ jt.mT if n >= m else jt.mT @ jt)
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(-1)
    return torch.where(finite[:, None], s, torch.nan)


def gram_singular_values_and_top_vector(jac: Tensor) -> Tensor:
    """Singular values and the top right-singular vector ``v_1`` per matrix, from one ``eigh``.

    ``v_1`` is the eigenvector of the float64 ``J^T J`` with the largest eigenvalue, its
    largest-magnitude entry made positive (the sign of a singular vector is arbitrary).

    Args:
        jac: ``(B, n, m)`` Jacobians.

    Returns:
        ``(B, min(n, m) + m)`` float64: ``s`` descending, then ``v_1``; NaN rows where ``J`` is
        not finite.
    """
    jt = jac.mT.to(torch.float64)
    gram, finite = _finite_gram(jt @ jt.mT)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    s = eigenvalues.clamp_min(0).sqrt().flip(-1)[..., : min(jac.shape[-2:])]
    v = eigenvectors[..., -1]
    v = v * v.gather(-1, v.abs().argmax(dim=-1, keepdim=True)).sign()
    return torch.where(finite[:, None], torch.cat([s, v], dim=-1), torch.nan)


def singular_values(
    f: Decoder,
    z: Tensor,
    *,
    chunk_size: int | None = None,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Singular values of the decoder's Jacobian at each latent point.

    Feiszli (2017), sec. 2.1 and sec. 5.2. The Jacobian comes from
    :func:`~lightning_memwatch.functional.jacobian.jacobian` chunk by chunk; only the
    ``min(n, m)``-square Gram of each point is formed from it (float64), so memory is bounded
    by ``chunk_size``.

    With ``top_k = k`` only the ``k`` largest are computed, by randomized block Krylov on the
    Jacobian as an operator (Musco & Musco 2015 Alg. 2, one Krylov step, oversampling 8; see
    :func:`~lightning_memwatch.functional.topk.top_singular_values`): ``3 (k + 8)`` Jacobian- or
    vector-Jacobian products per point instead of ``m``, no ``n x m`` Jacobian and no
    ``m x m`` eigen-solve. Within ``5e-4`` relative when ``s_{k+1} <= s_k / 10``; without
    such a gap the values near ``s_k`` come out low (measured up to 30% on slowly decaying or
    nearly flat spectra), never high.

    Args:
        f: any callable from a ``(B, m)`` latent batch to a ``(B, ...)`` output batch.
        z: latent points, ``(B, m)``.
        chunk_size: points per forward-mode pass (``None``: sized to a memory budget).
        top_k: ``None`` for the whole exact spectrum, or how many of the largest values
            (``1 <= top_k <= min(n, m)``) to estimate.
        generator: draws the start block of the ``top_k`` method (``None``: the same fixed
            seed at every call, so values over epochs move with the model only).

    Returns:
        ``(B, min(n, m))``, or ``(B, top_k)``, float64, descending; a NaN row where the output
        or the Jacobian is not finite.

    Example::

        >>> import torch
        >>> A = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
        >>> singular_values(lambda z: z @ A.T, torch.randn(2, 2))
        tensor([[3., 2.],
                [3., 2.]], dtype=torch.float64)
        >>> singular_values(lambda z: z @ A.T, torch.randn(2, 2), top_k=1).round(decimals=6)
        tensor([[3.],
                [3.]], dtype=torch.float64)
    """
    if top_k is not None:
        return top_singular_values(f, z, top_k, chunk_size=chunk_size, generator=generator)
    return map_jacobian_chunks(f, z, gram_singular_values, chunk_size=chunk_size)


def _check_spectrum(s: Tensor) -> None:
    if not isinstance(s, Tensor) or s.ndim < 1 or not s.is_floating_point():
        raise ValueError(
            "Expected `s` to be a floating-point tensor of singular values (..., r) but got "
            f"{type(s).__name__ if not isinstance(s, Tensor) else (tuple(s.shape), s.dtype)}"
        )


def _check_rtol(rtol: float) -> None:
    if not 0.0 <= rtol < 1.0:
        raise ValueError(f"Expected `rtol` to be in [0, 1) but got {rtol!r}")


def intrinsic_dim(s: Tensor, *, rtol: float = 1e-4) -> Tensor:
    """Number of non-degenerate singular values, ``k = #{i : s_i > rtol * s_1}``.

    Feiszli (2017), sec. 3: singular values below a threshold are treated as
    zero. The default ``rtol = 1e-4`` sits well above the float32 noise floor (about ``1e-7``
    relative).

    On a top-``k`` spectrum (``r = k`` values) the count is capped at ``k``: it is the
    intrinsic dimension when that is below ``k``, and ``k`` means "at least ``k``".

    Args:
        s: ``(..., r)`` singular values, descending.
        rtol: threshold relative to the largest singular value.

    Returns:
        ``(...,)`` int64; ``-1`` where a row has a non-finite value.

    Example::

        >>> import torch
        >>> intrinsic_dim(torch.tensor([[4.0, 1.0, 1e-9], [1.0, float("nan"), 0.0]]))
        tensor([ 2, -1])
    """
    _check_spectrum(s)
    _check_rtol(rtol)
    k = (s > rtol * s[..., :1]).sum(dim=-1)
    return torch.where(torch.isfinite(s).all(dim=-1), k, -1)


def _rank(s: Tensor, k: int | Tensor | None, rtol: float) -> Tensor:
    """``k`` as a ``(...,)`` int64 tensor (``-1`` marks rows to report as NaN)."""
    if k is None:
        return intrinsic_dim(s, rtol=rtol)
    r = s.shape[-1]
    k = torch.as_tensor(k, device=s.device)
    if k.is_floating_point() or bool(((k < 0) | (k > r)).any()):
        raise ValueError(f"Expected `k` to be an integer in [0, {r}] (or None) but got {k}")
    k = k.to(torch.int64).expand(s.shape[:-1])
    return torch.where(torch.isfinite(s).all(dim=-1), k, -1)


def local_scaling(s: Tensor, *, k: int | Tensor | None = None, rtol: float = 1e-4) -> Tensor:
    """Local scaling ``psi = sum_{i <= k} log s_i``.

    Humayun et al. (2024), eq. 2; half the log-determinant of the metric tensor
    ``J^T J`` (Ramirez et al. (poster)) restricted to its non-degenerate part,
    i.e. the log volume element of Feiszli (2017), eq. 1.

    Args:
        s: ``(..., r)`` singular values, descending.
        k: how many singular values count (int or per-row tensor); ``None``:
            :func:`intrinsic_dim` with ``rtol``. Fix it at an anchor point to keep ``psi``
            continuous along a path (Feiszli (2017), sec. 4.2).
        rtol: threshold for ``k`` when ``k`` is None.

    On a top-``k`` spectrum the sum runs over at most those ``k`` values: ``psi`` is the log
    volume element of the top-``k`` directions only, the full ``psi`` less
    ``sum_{top_k < i <= k(z)} log s_i``; compare it between points or epochs measured with the
    same ``top_k``, not with the exact path.

    Returns:
        ``(...,)`` tensor; NaN where a row has a non-finite value.

    Example::

        >>> import math, torch
        >>> psi = local_scaling(torch.tensor([[math.e**2, math.e, 1e-9]]))
        >>> psi
        tensor([3.])
    """
    _check_spectrum(s)
    _check_rtol(rtol)
    k = _rank(s, k, rtol)
    kept = torch.arange(s.shape[-1], device=s.device) < k.unsqueeze(-1)
    psi = torch.where(kept, s.log(), 0.0).sum(dim=-1)
    return torch.where(k >= 0, psi, torch.nan)


def local_rank(s: Tensor) -> Tensor:
    """Local rank ``nu = exp(-sum_i p_i log p_i)``, ``p_i = s_i / sum_j s_j + 1e-30``.

    Humayun et al. (2024), sec. 2 ("Local rank"): the exponential of the entropy of
    the normalised spectrum, over all ``r`` singular values; ``nu = r`` for a flat spectrum and
    ``1`` for a single non-zero value.

    On a top-``k`` spectrum ``p`` is normalised over those ``k`` values, so ``nu`` is the
    effective rank of the top-``k`` part alone, ``1 <= nu <= k``; the omitted tail does not
    enter it.

    Args:
        s: ``(..., r)`` singular values.

    Returns:
        ``(...,)`` tensor; NaN where a row has a non-finite value or is all zero.

    Example::

        >>> import torch
        >>> local_rank(torch.tensor([[2.0, 2.0, 2.0, 2.0], [5.0, 0.0, 0.0, 0.0]]))
        tensor([4., 1.])
    """
    _check_spectrum(s)
    p = s / s.sum(dim=-1, keepdim=True) + 1e-30
    return torch.exp(-(p * p.log()).sum(dim=-1))


def log_condition(s: Tensor, *, k: int | Tensor | None = None, rtol: float = 1e-4) -> Tensor:
    """Log condition number of the non-degenerate part, ``log(s_1 / s_k)``.

    Ramirez et al. (poster) ("Conditioning of the problem"), restricted to the
    ``k`` non-degenerate singular values so that it stays finite for rank-deficient maps.

    Args:
        s: ``(..., r)`` singular values, descending.
        k: index of the smallest singular value that counts (int or per-row tensor);
            ``None``: :func:`intrinsic_dim` with ``rtol``.
        rtol: threshold for ``k`` when ``k`` is None.

    On a top-``k`` spectrum ``k`` is capped at ``top_k``: the value is ``log(s_1 / s_k)`` over
    the top ``k`` when the map has more than ``k`` non-degenerate directions (a lower bound on
    the full log condition), and the full one otherwise.

    Returns:
        ``(...,)`` tensor; NaN where ``k = 0`` or a row has a non-finite value.

    Example::

        >>> import torch
        >>> log_condition(torch.tensor([[100.0, 10.0, 1.0, 1e-9]])).exp()
        tensor([100.])
    """
    _check_spectrum(s)
    _check_rtol(rtol)
    k = _rank(s, k, rtol)
    s_k = s.gather(-1, (k - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(k >= 1, s[..., 0].log() - s_k.log(), torch.nan)
