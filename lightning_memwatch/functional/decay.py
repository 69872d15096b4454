"""Decay of the induced log-density around a latent point (Feiszli (2017), sec. 4.2, sec. 5.3).

On the latent line ``z + t v`` along the top right-singular vector ``v`` of ``J(z)``, the
induced log-density ``lp = log p(z) - psi_k`` of :mod:`~lightning_memwatch.functional.density`
is compared at the centre and where the output arclength reaches ``±r``:
``eta(r) = (lp(r) + lp(-r) - 2 lp(0)) / r``. A memorizing decoder concentrates its density on
the training outputs, so ``eta`` is strongly negative there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_memwatch.functional.density import _given, _scaling_at_rank, check_radii, spectra
from lightning_memwatch.functional.jacobian import (
    Decoder,
    _check_latents,
    as_plain_tensor,
    map_jacobian_chunks,
)
from lightning_memwatch.functional.paths import LATENT_LIMIT, radius_offsets
from lightning_memwatch.functional.priors import Prior, check_prior, log_prior, search_bound
from lightning_memwatch.functional.spectrum import (
    _check_rtol,
    gram_singular_values_and_top_vector,
    intrinsic_dim,
)
from lightning_memwatch.functional.topk import top_singular_values_and_vector

#: Fractions of the median nearest-neighbour distance of the training outputs that
#: :func:`nearest_neighbour_radii` returns: ``0.5`` reaches half way to the typical nearest
#: training sample (the middle of the crossfade between two memorized outputs), ``0.25`` stays
#: inside a sample's own neighbourhood; their ratio 2 is the paper's (0.5 and 1).
AUTO_RADII_FRACTIONS = (0.25, 0.5)


def nearest_neighbour_radii(
    x: Tensor, fractions: Sequence[float] = AUTO_RADII_FRACTIONS
) -> tuple[float, ...]:
    """Decay radii on the data's scale: ``r_j = fractions_j * median_i min_{k != i} |x_i - x_k|``
    over the distinct samples ``x_i``.

    ``x``: ``(N, ...)`` training samples (in output space, flattened, L2, float64). Samples equal
    in every value count once (a training set that repeats its samples, as small-data
    fine-tuning does, has the radii of its distinct samples): the median is over the distinct
    samples of the distance to the nearest other distinct one, numpy's median (the mean of the
    two middle values for an even count). Feiszli (2017) sec. 5.3 take 0.5 and 1 for MNIST in
    ``[-1, 1]``; on other data those miss the distances at which a memorizer's output moves, so
    the radii are set as fractions of the typical distance from a training sample to the next
    one. Raises ``ValueError`` when there are fewer than two distinct samples.

    Example::

        >>> import torch
        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 6.0]])
        >>> nearest_neighbour_radii(x)  # median of 5, 2, 2
        (0.5, 1.0)
        >>> nearest_neighbour_radii(x.repeat(16, 1))  # the same: repeats count once
        (0.5, 1.0)
    """
    r = check_radii(fractions)
    if not isinstance(x, Tensor) or x.ndim < 2:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"Expected at least two samples (N, ...) to set the radii from but got {got}"
        )
    flat = torch.unique(x.detach().reshape(len(x), -1).to(torch.float64), dim=0)
    if len(flat) < 2:
        raise ValueError(
            "Expected at least two distinct training samples to set the decay radii from "
            f"(radii='auto') but got {len(x)} samples with {len(flat)} distinct: every sample "
            "equals the others. Give the probe distinct samples, or pass explicit `radii=`"
        )
    dist = torch.cdist(flat, flat)
    dist.fill_diagonal_(torch.inf)
    typical = float(torch.quantile(dist.min(dim=1).values.cpu(), 0.5))
    if not (math.isfinite(typical) and typical > 0):
        raise ValueError(
            "Expected the median nearest-neighbour distance of the distinct training samples to "
            f"be a positive finite number (radii='auto') but got {typical}: the samples are not "
            "finite. Pass explicit `radii=`"
        )
    return tuple(float(v) * typical for v in r)


class DecayTerms(NamedTuple):
    """The parts of :func:`decay_scores`, ``decay = prior + volume``, each ``(B, R)``."""

    #: ``(log p(z_+) + log p(z_-) - 2 log p(z)) / r``, float64.
    prior: Tensor
    #: ``-(psi(z_+) + psi(z_-) - 2 psi(z)) / r``, ``k`` fixed at ``z``, float64.
    volume: Tensor
    #: bool: the radius was not reached on some side within the search bound while every value
    #: met was finite (a flat region); such entries are NaN, apart from the other NaNs.
    unreached: Tensor


def decay_terms(
    f: Decoder,
    z: Tensor,
    *,
    radii: Sequence[float] = (0.5, 1.0),
    rtol: float = 1e-4,
    prior: Prior = None,
    head: Tensor | None = None,
    top_k: int | None = None,
) -> DecayTerms:
    """Prior and volume terms of the decay ``(lp(r) + lp(-r) - 2 lp(0)) / r`` (see
    :func:`decay_scores`), and which radii were never reached.

    ``head``: the ``(B, r + m)`` output of
    :func:`~lightning_memwatch.functional.spectrum.gram_singular_values_and_top_vector` at ``z``
    from a pass the caller already made; then no Jacobian is computed at the centres. With
    ``top_k``: ``(B, top_k + m)``, the layout of
    :func:`~lightning_memwatch.functional.top_singular_values_and_vector`.

    Example::

        >>> import torch
        >>> terms = decay_terms(lambda z: 2 * z, torch.zeros(1, 2), radii=(1.0,))
        >>> terms.prior  # -r / s_1^2, all from the prior: psi is constant
        tensor([[-0.2500]], dtype=torch.float64)
        >>> terms.volume, terms.unreached
        (tensor([[0.]], dtype=torch.float64), tensor([[False]]))
    """
    _check_latents(z)
    r = check_radii(radii).to(z.device)
    _check_rtol(rtol)
    spec = check_prior(prior)
    z = as_plain_tensor(z)
    batch, dim = z.shape
    _given("head", head, batch)
    if head is None and top_k is None:
        head = map_jacobian_chunks(f, z, gram_singular_values_and_top_vector)
    elif head is None:
        head = torch.cat(top_singular_values_and_vector(f, z, top_k), dim=1)
    elif head.shape[1] <= dim:
        _given("head", head, batch, dim + 1)
    head = head.to(torch.float64)
    s0, v = head[:, :-dim], head[:, -dim:]
    k = intrinsic_dim(s0, rtol=rtol)
    head_ok = torch.isfinite(head).all(dim=-1)
    # a NaN Jacobian: a zero line never reaches r, so NaN below (and not "unreached")
    bound = max(LATENT_LIMIT, search_bound(spec, dim))
    t, reached = radius_offsets(f, z, v.nan_to_num(0.0), r, bound=bound)
    ends = (z.double()[:, None, None] + t.nan_to_num(0.0)[..., None] * v[:, None, None]).to(z.dtype)
    s = spectra(f, ends.reshape(-1, dim), top_k)
    if s.shape[1] != s0.shape[1]:
        _given("head", head, batch, s.shape[1] + dim)
    s = s.reshape(*t.shape, -1)
    lpr, lpr0 = log_prior(ends, spec), log_prior(z, spec)
    psi, psi0 = _scaling_at_rank(s, k[:, None, None]), _scaling_at_rank(s0, k)
    prior_term = (lpr[:, 0] + lpr[:, 1] - 2 * lpr0[:, None]) / r
    volume = -(psi[:, 0] + psi[:, 1] - 2 * psi0[:, None]) / r
    valid = torch.isfinite(t).all(dim=1) & torch.isfinite(prior_term + volume)
    bad_side = (reached & ~torch.isfinite(t)).any(dim=1)
    unreached = (~reached).any(dim=1) & ~bad_side & head_ok[:, None]
    return DecayTerms(
        torch.where(valid, prior_term, torch.nan),
        torch.where(valid, volume, torch.nan),
        unreached,
    )


def decay_scores(
    f: Decoder,
    z: Tensor,
    *,
    radii: Sequence[float] = (0.5, 1.0),
    rtol: float = 1e-4,
    prior: Prior = None,
    head: Tensor | None = None,
    top_k: int | None = None,
) -> Tensor:
    """Decay of the induced log-density around ``z``, ``eta(r) = (lp(r) + lp(-r) - 2 lp(0)) / r``.

    Feiszli (2017), sec. 4.2 procedure 2 and sec. 5.3: on the latent line ``z + t v`` along the top
    right-singular vector ``v`` of ``J(z)``, ``lp(±r)`` is ``log p(z + t_± v) - psi_k`` at the
    offsets ``t_+ > 0 > t_-`` where the output arclength from ``z`` reaches ``r`` each way,
    ``k`` fixed at ``z`` (by ``rtol``). **Negative decay = memorization** (the density peaks
    sharply on the output). ``decay = prior term + volume term`` (:func:`decay_terms`).

    The offsets are searched up to :data:`LATENT_LIMIT` each way, then, for a line whose output
    has not moved ``r`` there (a decoder flat around its training points, strongest memorization),
    over doubling segments ``[4, 8], [8, 16], ...`` up to the diameter of the prior's typical set
    (:func:`~lightning_memwatch.functional.priors.search_bound`: ``2 chi_{0.999}(m)`` for N(0, I),
    7.4 for ``m = 2``, 10.2 for ``m = 8``, 24.4 for ``m = 100``): a line from a typical point
    cannot run farther inside the region where the generator is sampled. Only the lines still
    short of a radius pay for a segment (``2 (COARSE_STEPS + 1)`` decoder points each). A radius
    not reached within the bound is NaN and flagged in :attr:`DecayTerms.unreached`. Brackets
    are refined by bisection (:func:`~lightning_memwatch.functional.paths.radius_offsets`).

    Args:
        f: any callable from a ``(B, m)`` latent batch to a ``(B, ...)`` output batch.
        z: line centres, ``(B, m)``.
        radii: output-space arclength radii ``r > 0`` (paper: 0.5 and 1).
        rtol: threshold for ``k`` at the centre.
        prior: ``None`` / ``"normal"`` (N(0, I)), ``"sphere"`` or a Distribution.
        head: optional ``(B, r + m)`` spectra and top right-singular vectors at ``z`` already
            computed (``gram_singular_values_and_top_vector``; with ``top_k``, ``r = top_k``).
        top_k: ``None``: exact spectra and top vector. An integer ``k``: the ``k`` largest
            singular values and ``v_1`` by randomized block Krylov
            (:func:`~lightning_memwatch.functional.top_singular_values_and_vector`), no
            ``n x m`` Jacobian; ``psi`` (the volume term) is then over those ``k`` values,
            ``k`` fixed at the centre capped at ``top_k``: another number than the exact
            decay, equal to it when the smaller values do not change along the line and there
            is a gap after ``k``. Against the same definition on the exact top ``k``, without
            a gap (random MLP and conv decoders, ``k = 32``,
            ``benchmarks/density_scaling.py``): within 6% at m = 128, 16-19% at m = 512 and
            17-34% at m = 2,048, the Ritz values near ``s_k`` being low by different amounts
            at the centre and the line ends (two Krylov steps: 0.2%, 1-3% and 1-9%).

    Returns:
        ``(B, len(radii))`` float64; NaN where a value is not finite or ``r`` is not reached.

    Example::

        >>> import torch
        >>> A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> decay_scores(lambda z: z @ A.T, torch.zeros(1, 2))  # -r / s_1^2
        tensor([[-0.1250, -0.2500]], dtype=torch.float64)
    """
    terms = decay_terms(f, z, radii=radii, rtol=rtol, prior=prior, head=head, top_k=top_k)
    return terms.prior + terms.volume
