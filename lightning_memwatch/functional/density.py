"""The density a generator induces on its outputs, and its dip and decay along latent lines.

Feiszli (2017), eq. 2: a latent prior ``p(z)`` pushed through ``f: R^m -> R^n`` gives the outputs
the density ``p~(f(z)) = p(z) / prod_{i <= k} s_i`` on the ``k``-dimensional image manifold, so
``lp = log p(z) - psi_k(z)`` with ``psi_k`` the local scaling of
:mod:`~lightning_memwatch.functional.spectrum`. Memorization concentrates ``p~`` on the training
outputs: it dips between two of them (sec. 4.1, here) and decays fast around each (sec. 4.2,
:mod:`~lightning_memwatch.functional.decay`), both measured against output-space arclength ``s``
(summed L2 chords, outputs flattened). Each score is the sum of a prior term (the ``log p``
parts) and a volume term (the ``-psi`` parts), given apart by :func:`dip_terms` and
:func:`~lightning_memwatch.functional.decay.decay_terms`.

Along one path or line the rank ``k`` is fixed at its anchor (path start, line centre) so that
``lp`` is continuous (Feiszli (2017), sec. 4.2, fig. 6). Scores are float64; a path or radius that
cannot be computed (non-finite output or Jacobian, a radius never reached) is NaN, never an
exception. The prior is a spec of :mod:`~lightning_memwatch.functional.priors`. With the
``"sphere"`` prior ``psi`` is still taken over the full ``m``-dimensional Jacobian (the sphere's
tangent space is not projected out) and lines run straight through ``R^m``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.jacobian import (
    Decoder,
    as_plain_tensor,
    map_jacobian_chunks,
)
from lightning_memwatch.functional.paths import arclength, interp
from lightning_memwatch.functional.priors import Prior, check_prior, log_prior
from lightning_memwatch.functional.spectrum import (
    _check_rtol,
    gram_singular_values,
    intrinsic_dim,
    local_scaling,
)
from lightning_memwatch.functional.topk import top_singular_values

_log_prior = log_prior  # the name likelihood.py imports from here


def spectra(f: Decoder, z: Tensor, top_k: int | None = None) -> Tensor:
    """Singular values at each point, ``(B, r)`` float64: all ``min(n, m)`` from the exact
    Jacobian (``top_k=None``), else the ``top_k`` largest by randomized block Krylov on the
    Jacobian as an operator (:func:`~lightning_memwatch.functional.top_singular_values`)."""
    if top_k is None:
        return map_jacobian_chunks(f, z, gram_singular_values)
    return top_singular_values(f, z, top_k)


def _scaling_at_rank(s: Tensor, k: Tensor) -> Tensor:
    """``psi_k`` with ``k`` broadcast over ``s``'s leading dims; NaN where ``k = -1``."""
    k = k.expand(s.shape[:-1])
    return torch.where(k >= 0, local_scaling(s, k=k.clamp_min(0)), torch.nan)


def induced_log_density(
    f: Decoder,
    z: Tensor,
    *,
    k: int | Tensor | None = None,
    rtol: float = 1e-4,
    prior: Prior = None,
) -> Tensor:
    """Log of the density induced on the outputs, ``lp(z) = log p(z) - sum_{i <= k} log s_i``.

    Feiszli (2017), eq. 2 (sec. 3): ``p~(f(z)) = p(z) / prod_{i<=k} s_i``, the ``s_i`` the singular
    values of ``J = df/dz`` at ``z`` and ``k`` the non-degenerate ones.

    Args:
        f: any callable from a ``(B, m)`` latent batch to a ``(B, ...)`` output batch.
        z: latent points, ``(B, m)``.
        k: how many singular values count (int or ``(B,)`` tensor); ``None``:
            ``#{i : s_i > rtol * s_1}`` at each point.
        rtol: threshold for ``k`` when ``k`` is None.
        prior: ``None`` / ``"normal"`` (N(0, I)), ``"sphere"`` or a Distribution
            (:func:`~lightning_memwatch.functional.priors.log_prior`).

    Returns:
        ``(B,)`` float64; NaN where the Jacobian is not finite.

    Example::

        >>> import math, torch
        >>> A = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
        >>> lp = induced_log_density(lambda z: z @ A.T, torch.zeros(1, 2))
        >>> torch.exp(-lp) / math.pi  # 1 / p~ = 2 pi * (2 * 3) at z = 0
        tensor([12.], dtype=torch.float64)
    """
    _check_rtol(rtol)
    spec = check_prior(prior)
    s = map_jacobian_chunks(f, z, gram_singular_values)
    psi = local_scaling(s, k=k, rtol=rtol)
    return log_prior(as_plain_tensor(z), spec) - psi


class DipTerms(NamedTuple):
    """The two parts of :func:`dip_scores`, ``dip = prior + volume``, each ``(B,)`` float64."""

    #: ``log p(z_0) + log p(z_1) - 2 log p(z_mid)``; ``-|z_0 - z_1|^2 / 4`` for N(0, I) when
    #: ``z_mid`` is the latent midpoint.
    prior: Tensor
    #: ``-(psi(z_0) + psi(z_1) - 2 psi(z_mid))``, ``k`` fixed at ``z_0``.
    volume: Tensor


def _check_pair(z_start: Tensor, z_end: Tensor) -> None:
    for name, z in (("z_start", z_start), ("z_end", z_end)):
        if not isinstance(z, Tensor) or z.ndim != 2 or not z.is_floating_point():
            got = (tuple(z.shape), z.dtype) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(
                f"Expected `{name}` to be a floating (B, m) latent batch but got {got}"
            )
    if z_start.shape != z_end.shape:
        raise ValueError(
            "Expected `z_start` and `z_end` to have the same shape but got "
            f"{tuple(z_start.shape)} and {tuple(z_end.shape)}"
        )


def _given(name: str, value: Tensor | None, rows: int, columns: int | None = None) -> None:
    """Check a precomputed ``(rows, columns)`` spectrum (``columns=None``: any >= 1)."""
    if value is None:
        return
    ok = isinstance(value, Tensor) and value.ndim == 2 and value.is_floating_point()
    ok = ok and value.shape[0] == rows and value.shape[1] >= 1
    if ok and columns is not None:
        ok = value.shape[1] == columns
    if not ok:
        got = (tuple(value.shape), value.dtype) if isinstance(value, Tensor) else type(value)
        want = f"({rows}, {columns if columns is not None else 'r'})"
        raise ValueError(f"Expected `{name}` to be a floating {want} tensor but got {got}")


def dip_terms(
    f: Decoder,
    z_start: Tensor,
    z_end: Tensor,
    *,
    steps: int = 17,
    rtol: float = 1e-4,
    prior: Prior = None,
    s_start: Tensor | None = None,
    s_end: Tensor | None = None,
    top_k: int | None = None,
) -> DipTerms:
    """Prior and volume terms of the dip ``lp(s_0) + lp(s_1) - 2 lp(s_1/2)`` (see
    :func:`dip_scores`); ``dip = prior + volume``, NaN in both where the dip is.

    ``s_start`` / ``s_end``: the ``(B, r)`` singular values at ``z_start`` / ``z_end`` from a pass
    the caller already made (e.g. the probe's spectrum); with both, one Jacobian per path (at the
    midpoint) is computed instead of three. With ``top_k``, ``s_start`` / ``s_end`` hold the
    ``top_k`` largest values (see :func:`dip_scores`).

    Example::

        >>> import torch
        >>> z0, z1 = torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
        >>> terms = dip_terms(lambda z: 3 * z, z0, z1)  # -|z0 - z1|^2 / 4, psi constant
        >>> terms.prior, terms.volume
        (tensor([-1.], dtype=torch.float64), tensor([0.], dtype=torch.float64))
    """
    _check_pair(z_start, z_end)
    check_int("steps", steps, minimum=3)
    _check_rtol(rtol)
    spec = check_prior(prior)
    z0, z1 = as_plain_tensor(z_start), as_plain_tensor(z_end).to(z_start.dtype)
    batch = z0.shape[0]
    _given("s_start", s_start, batch)
    _given("s_end", s_end, batch)
    grid = torch.linspace(0.0, 1.0, steps, dtype=torch.float64, device=z0.device)
    t = grid[:, None]
    path = ((1 - t) * z0.double()[:, None] + t * z1.double()[:, None]).to(z0.dtype)
    arc = arclength(f, path)
    total = arc[:, -1]
    # the exact latent point where the sampled arclength reaches half its total
    t_mid = interp(total / 2, arc, grid.expand(batch, -1)).nan_to_num(0.5)[:, None]
    z_mid = ((1 - t_mid) * z0.double() + t_mid * z1.double()).to(z0.dtype)
    needed = [z_mid] + [z for z, s in ((z0, s_start), (z1, s_end)) if s is None]
    s = spectra(f, torch.cat(needed), top_k).split(batch)
    s_mid, computed = s[0], list(s[1:])
    for name, given in (("s_start", s_start), ("s_end", s_end)):
        _given(name, given, batch, s_mid.shape[1])
    s0 = computed.pop(0) if s_start is None else s_start.to(torch.float64)
    s1 = computed.pop(0) if s_end is None else s_end.to(torch.float64)
    k = intrinsic_dim(s0, rtol=rtol)
    lpr = log_prior(torch.stack([z0, z1, z_mid], dim=1), spec)
    psi = _scaling_at_rank(torch.stack([s0, s1, s_mid], dim=1), k[:, None])
    prior_term = lpr[:, 0] + lpr[:, 1] - 2 * lpr[:, 2]
    volume = -(psi[:, 0] + psi[:, 1] - 2 * psi[:, 2])
    valid = torch.isfinite(prior_term + volume) & torch.isfinite(arc).all(dim=-1) & (total > 0)
    return DipTerms(
        torch.where(valid, prior_term, torch.nan), torch.where(valid, volume, torch.nan)
    )


def dip_scores(
    f: Decoder,
    z_start: Tensor,
    z_end: Tensor,
    *,
    steps: int = 17,
    rtol: float = 1e-4,
    prior: Prior = None,
    s_start: Tensor | None = None,
    s_end: Tensor | None = None,
    top_k: int | None = None,
) -> Tensor:
    """Dip of the induced log-density between two latents, ``lp(s_0) + lp(s_1) - 2 lp(s_1/2)``.

    Feiszli (2017), sec. 4.1 procedure 1 and sec. 5.3: the latent segment ``z_t = (1 - t) z_start +
    t z_end`` at ``steps`` uniform ``t``; arclength ``s`` by summed output chords; the latent
    midpoint ``z_mid = z_{t*}`` with ``t*`` interpolated where ``s`` reaches half its total;
    ``lp = log p(z) - psi_k`` with ``k`` fixed at ``z_start`` (by ``rtol``), evaluated exactly at
    ``z_start``, ``z_end`` and ``z_mid``. **Positive dip = memorization** (the density sags between
    the two outputs). One decoder pass for all ``B * steps`` points gives the arclength, one
    Jacobian pass the spectra (at ``z_mid`` only when ``s_start`` and ``s_end`` are given).
    ``dip = prior term + volume term`` (:func:`dip_terms`); for N(0, I) and an arclength that
    grows evenly along the path (``t* = 1/2``) the prior term is ``-|z_start - z_end|^2 / 4``,
    which dominates in high dimensions (its mean is ``-m / 2`` for two independent N(0, I)
    draws: -50 on 100 latent dims).

    Args:
        f: any callable from a ``(B, m)`` latent batch to a ``(B, ...)`` output batch.
        z_start: path starts, ``(B, m)`` (the anchor where ``k`` is set).
        z_end: path ends, ``(B, m)``.
        steps: samples per path for the arclength, ``>= 3``.
        rtol: threshold for ``k`` at the start point.
        prior: ``None`` / ``"normal"`` (N(0, I)), ``"sphere"`` or a Distribution.
        s_start: optional ``(B, r)`` singular values at ``z_start`` already computed.
        s_end: optional ``(B, r)`` singular values at ``z_end`` already computed.
        top_k: ``None``: exact spectra. An integer ``k``: the ``k`` largest singular values by
            randomized block Krylov (:func:`~lightning_memwatch.functional.top_singular_values`,
            ``3 (k + 8)`` Jacobian- or vector-Jacobian products a point instead of ``m``), and
            ``psi`` is over those: the log volume of the top-``k`` directions, ``k`` fixed at
            ``z_start`` capped at ``top_k``. The dip then leaves out the change of the smaller
            values along the path: another number than the exact dip, equal to it when those
            do not change (a tail constant along the path) and the values have a gap after
            ``k``. Against the same definition on the exact top ``k``, without a gap (random
            MLP and conv decoders, m = 128 to 2,048, ``k = 32``,
            ``benchmarks/density_scaling.py``): within 0.4% (two Krylov steps: 0.06%).

    Returns:
        ``(B,)`` float64; NaN for a path with a non-finite value or zero total arclength.

    Example::

        >>> import torch
        >>> dip_scores(lambda z: 3 * z, torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
        tensor([-1.], dtype=torch.float64)
    """
    terms = dip_terms(
        f,
        z_start,
        z_end,
        steps=steps,
        rtol=rtol,
        prior=prior,
        s_start=s_start,
        s_end=s_end,
        top_k=top_k,
    )
    return terms.prior + terms.volume


def check_radii(radii: Sequence[float]) -> Tensor:
    """``radii`` as a 1-D float64 tensor; ``ValueError`` unless a non-empty sequence of finite
    positive numbers (``bool`` is not a number here)."""
    try:
        r = torch.as_tensor(radii, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        r = None
    if isinstance(radii, Sequence) and any(isinstance(v, bool) for v in radii):
        r = None
    if r is None or r.ndim != 1 or r.numel() == 0 or not bool((torch.isfinite(r) & (r > 0)).all()):
        raise ValueError(
            f"Expected `radii` to be a non-empty sequence of positive numbers but got {radii!r}"
        )
    return r
