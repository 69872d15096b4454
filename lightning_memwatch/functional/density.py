"""The density a generator induces on its outputs, and its dip and decay along latent lines.

``papers/feiszli_latent_geometry.txt`` eq. 2: a latent prior ``p(z)`` pushed through
``f: R^m -> R^n`` gives the outputs the density ``p~(f(z)) = p(z) / prod_{i <= k} s_i`` on the
``k``-dimensional image manifold, so ``lp = log p(z) - psi_k(z)`` with ``psi_k`` the local
scaling of :mod:`~lightning_memwatch.functional.spectrum`. Memorization concentrates ``p~`` on
the training outputs: it dips between two of them (§4.1) and decays fast around each (§4.2),
both measured against output-space arclength ``s`` (summed L2 chords, outputs flattened).

Along one path or line the rank ``k`` is fixed at its anchor (path start, line centre) so that
``lp`` is continuous (DESIGN §2). Scores are float64; a path or radius that cannot be computed
(non-finite output or Jacobian, a radius never reached) is NaN, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.jacobian import (
    Decoder,
    _check_latents,
    as_plain_tensor,
    map_jacobian_chunks,
)
from lightning_memwatch.functional.paths import arclength, interp
from lightning_memwatch.functional.spectrum import (
    _check_rtol,
    gram_singular_values,
    gram_singular_values_and_top_vector,
    intrinsic_dim,
    local_scaling,
)

#: How far (latent units: standard deviations of the N(0, I) prior) :func:`decay_scores` follows
#: a line each way from its centre looking for the arclength radii; a radius not reached within
#: it is NaN. 4 leaves the bulk of the prior (``P(|N(0, 1)| > 4) = 6e-5``) and keeps a linear
#: map's radius ``r`` reachable down to ``s_1 = r / 4``.
LATENT_LIMIT = 4.0
#: Uniform samples per side over ``[0, LATENT_LIMIT]`` that bracket each radius (spacing 1/16).
COARSE_STEPS = 64
#: Uniform samples inside the bracketing interval, where the radius is interpolated. A line
#: costs ``2 (COARSE_STEPS + 1) + 2 R (FINE_STEPS + 1)`` decoder points and ``1 + 2 R`` Jacobians.
FINE_STEPS = 16


def _log_prior(z: Tensor, prior: Distribution | None = None) -> Tensor:
    """``log p(z)`` per point, float64; ``prior=None`` is N(0, I) over ``R^m``."""
    if prior is None:
        z64 = z.to(torch.float64)
        return -0.5 * (z64.square().sum(dim=-1) + z.shape[-1] * math.log(2 * math.pi))
    logp = prior.log_prob(z)
    if logp.shape == z.shape:  # a batch of m independent scalars, not an event of size m
        logp = logp.sum(dim=-1)
    if logp.shape != z.shape[:1]:
        raise ValueError(
            f"Expected `prior.log_prob` to give (B,) or (B, m) values but got {tuple(logp.shape)}"
        )
    return logp.to(torch.float64)


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
    prior: Distribution | None = None,
) -> Tensor:
    """Log of the density induced on the outputs, ``lp(z) = log p(z) - sum_{i <= k} log s_i``.

    ``papers/feiszli_latent_geometry.txt`` eq. 2 (§3): ``p~(f(z)) = p(z) / prod_{i<=k} s_i``,
    the ``s_i`` the singular values of ``J = df/dz`` at ``z`` and ``k`` the non-degenerate ones.

    Args:
        f: any callable from a ``(B, m)`` latent batch to a ``(B, ...)`` output batch.
        z: latent points, ``(B, m)``.
        k: how many singular values count (int or ``(B,)`` tensor); ``None``:
            ``#{i : s_i > rtol * s_1}`` at each point.
        rtol: threshold for ``k`` when ``k`` is None.
        prior: latent distribution (``log_prob`` of a ``(B, m)`` batch giving ``(B,)``, or
            ``(B, m)`` independent terms that are summed); ``None``: standard normal N(0, I).

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
    if prior is not None and not isinstance(prior, Distribution):
        raise ValueError(
            f"Expected `prior` to be a torch Distribution or None but got {type(prior).__name__}"
        )
    s = map_jacobian_chunks(f, z, gram_singular_values)
    psi = local_scaling(s, k=k, rtol=rtol)
    return _log_prior(as_plain_tensor(z), prior) - psi


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


def dip_scores(
    f: Decoder, z_start: Tensor, z_end: Tensor, *, steps: int = 17, rtol: float = 1e-4
) -> Tensor:
    """Dip of the induced log-density between two latents, ``lp(s_0) + lp(s_1) - 2 lp(s_1/2)``.

    ``papers/feiszli_latent_geometry.txt`` §4.1 procedure 1 and §5.3: the latent segment
    ``z_t = (1 - t) z_start + t z_end`` at ``steps`` uniform ``t``; arclength ``s`` by summed
    output chords; ``lp = log N(z; 0, I) - psi_k`` with ``k`` fixed at ``z_start`` (by ``rtol``);
    ``lp`` at the arclength midpoint is linearly interpolated in ``s``. **Positive dip =
    memorization** (the density sags between the two outputs). One decoder pass for all
    ``B * steps`` points gives the arclength; ``lp`` is needed, and its Jacobians computed (one
    pass), only at four samples per path: both ends and the two that bracket the midpoint.

    Args:
        f: any callable from a ``(B, m)`` latent batch to a ``(B, ...)`` output batch.
        z_start: path starts, ``(B, m)`` (the anchor where ``k`` is set).
        z_end: path ends, ``(B, m)``.
        steps: samples per path, ``>= 3`` (an odd number puts ``t = 1/2`` on a sample).
        rtol: threshold for ``k`` at the start point.

    Returns:
        ``(B,)`` float64; NaN for a path with a non-finite value or zero total arclength.

    Example::

        >>> import torch
        >>> dip_scores(lambda z: 3 * z, torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
        tensor([-1.], dtype=torch.float64)
    """
    _check_pair(z_start, z_end)
    check_int("steps", steps, minimum=3)
    _check_rtol(rtol)
    z0, z1 = as_plain_tensor(z_start), as_plain_tensor(z_end).to(z_start.dtype)
    batch, dim = z0.shape
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64, device=z0.device)[:, None]
    path = ((1 - t) * z0.double()[:, None] + t * z1.double()[:, None]).to(z0.dtype)
    arc = arclength(f, path)
    total = arc[:, -1]
    # lp is needed at four samples per path: both ends and the two bracketing the midpoint.
    below = torch.searchsorted(arc.contiguous(), (total / 2)[:, None].contiguous(), right=True)
    below = (below - 1).clamp(0, steps - 2)
    cols = torch.cat(
        [torch.zeros_like(below), torch.full_like(below, steps - 1), below, below + 1], 1
    )
    anchors = path.gather(1, cols[..., None].expand(-1, -1, dim))
    s = map_jacobian_chunks(f, anchors.reshape(-1, dim), gram_singular_values)
    s = s.reshape(batch, 4, -1)
    k = intrinsic_dim(s[:, 0], rtol=rtol)
    lp = _log_prior(anchors) - _scaling_at_rank(s, k[:, None])
    dip = lp[:, 0] + lp[:, 1] - 2 * interp(total / 2, arc.gather(1, cols[:, 2:]), lp[:, 2:])
    valid = torch.isfinite(lp).all(dim=-1) & torch.isfinite(arc).all(dim=-1) & (total > 0)
    return torch.where(valid, dip, torch.nan)


def _radius_offsets(f: Decoder, z: Tensor, v: Tensor, radii: Tensor) -> Tensor:
    """Latent offsets ``t`` where the output arclength along ``z + t v`` reaches ``±r``.

    Coarse pass: ``COARSE_STEPS`` uniform samples per side over ``[0, LATENT_LIMIT]``,
    cumulative arclength, first sample at or past ``r``. Fine pass: ``FINE_STEPS`` samples
    inside that bracket, arclength continued from the bracket's start (the fine chords sum to at
    least the coarse chord, so ``r`` is inside), ``t`` interpolated linearly in arclength.

    Returns:
        ``(B, 2, R)`` float64 (side ``+`` then ``-``); NaN where ``r`` is not reached.
    """
    batch, dim = z.shape
    radii = radii.expand(batch, 2, -1).contiguous()
    opts = {"dtype": torch.float64, "device": z.device}
    sides = torch.tensor([1.0, -1.0], **opts)[:, None]
    t = (sides * torch.linspace(0.0, LATENT_LIMIT, COARSE_STEPS + 1, **opts)).expand(batch, 2, -1)

    def line(t: Tensor) -> Tensor:
        shape = (batch,) + (1,) * (t.ndim - 1) + (dim,)
        return (z.double().reshape(shape) + t[..., None] * v.reshape(shape)).to(z.dtype)

    arc = arclength(f, line(t))
    arc = torch.where(torch.isnan(arc), torch.inf, arc)  # keep rows sorted past a NaN output
    hi = torch.searchsorted(arc, radii, right=False)  # first sample with arclength >= r
    reached = hi <= COARSE_STEPS
    hi = hi.clamp(1, COARSE_STEPS)
    t_lo, t_hi, arc_lo = t.gather(-1, hi - 1), t.gather(-1, hi), arc.gather(-1, hi - 1)
    frac = torch.linspace(0.0, 1.0, FINE_STEPS + 1, **opts)
    fine_t = t_lo[..., None] + (t_hi - t_lo)[..., None] * frac
    fine_arc = arc_lo[..., None] + arclength(f, line(fine_t))
    offsets = interp(radii, fine_arc, fine_t)
    reached &= torch.isfinite(fine_arc).all(dim=-1)
    return torch.where(reached, offsets, torch.nan)


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


def decay_scores(
    f: Decoder, z: Tensor, *, radii: Sequence[float] = (0.5, 1.0), rtol: float = 1e-4
) -> Tensor:
    """Decay of the induced log-density around ``z``, ``eta(r) = (lp(r) + lp(-r) - 2 lp(0)) / r``.

    ``papers/feiszli_latent_geometry.txt`` §4.2 procedure 2 and §5.3: on the latent line
    ``z + t v`` along the top right-singular vector ``v`` of ``J(z)``, ``lp(±r)`` is
    ``log N(z + t_± v; 0, I) - psi_k`` at the offsets ``t_+ > 0 > t_-`` where the output
    arclength from ``z`` reaches ``r`` each way, ``k`` fixed at ``z`` (by ``rtol``). The offsets
    are searched up to :data:`LATENT_LIMIT` each way (see :func:`_radius_offsets`). **Negative
    decay = memorization** (the density peaks sharply on the output).

    Args:
        f: any callable from a ``(B, m)`` latent batch to a ``(B, ...)`` output batch.
        z: line centres, ``(B, m)``.
        radii: output-space arclength radii ``r > 0`` (paper: 0.5 and 1).
        rtol: threshold for ``k`` at the centre.

    Returns:
        ``(B, len(radii))`` float64; NaN where a value is not finite or ``r`` is not reached.

    Example::

        >>> import torch
        >>> A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> decay_scores(lambda z: z @ A.T, torch.zeros(1, 2))  # -r / s_1^2
        tensor([[-0.1250, -0.2500]], dtype=torch.float64)
    """
    _check_latents(z)
    r = check_radii(radii).to(z.device)
    _check_rtol(rtol)
    z = as_plain_tensor(z)
    dim = z.shape[1]
    head = map_jacobian_chunks(f, z, gram_singular_values_and_top_vector)
    s0, v = head[:, :-dim], head[:, -dim:]
    k = intrinsic_dim(s0, rtol=rtol)
    v = v.nan_to_num(0.0)  # a NaN Jacobian: a zero line never reaches r, so NaN below
    t = _radius_offsets(f, z, v, r)
    ends = (z.double()[:, None, None] + t.nan_to_num(0.0)[..., None] * v[:, None, None]).to(z.dtype)
    flat = ends.reshape(-1, dim)
    s = map_jacobian_chunks(f, flat, gram_singular_values).reshape(*t.shape, -1)
    lp = _log_prior(ends) - _scaling_at_rank(s, k[:, None, None])
    lp0 = _log_prior(z) - _scaling_at_rank(s0, k)
    eta = (lp[:, 0] + lp[:, 1] - 2 * lp0[:, None]) / r
    return torch.where(torch.isfinite(t).all(dim=1) & torch.isfinite(eta), eta, torch.nan)
