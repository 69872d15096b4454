"""``lp`` along one latent path or line, for plotting (Feiszli (2017), fig. 3-5).

The scores of :mod:`~lightning_memwatch.functional.density` read ``lp`` at a few points; these
profiles sample it along the whole path or line, with the rank ``k`` fixed at the anchor as the
scores do (Feiszli (2017), procedures 1 and 2), and ``log p`` from the same prior spec
(:mod:`~lightning_memwatch.functional.priors`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memwatch.functional.density import _scaling_at_rank
from lightning_memwatch.functional.jacobian import Decoder, map_jacobian_chunks
from lightning_memwatch.functional.paths import arclength
from lightning_memwatch.functional.priors import Prior, check_prior, log_prior
from lightning_memwatch.functional.spectrum import (
    gram_singular_values,
    gram_singular_values_and_top_vector,
    intrinsic_dim,
)


def _anchored_lp(
    f: Decoder, points: Tensor, s_anchor: Tensor | None, rtol: float, prior: Prior
) -> Tensor:
    """``lp = log p(z) - psi_k`` at ``points`` (one Jacobian pass), ``k`` the rank of the
    anchor's spectrum ``s_anchor`` (``(1, r)``; ``None``: the anchor is ``points[0]``)."""
    s = map_jacobian_chunks(f, points, gram_singular_values)
    anchor = s[:1] if s_anchor is None else s_anchor
    return log_prior(points, prior) - _scaling_at_rank(s, intrinsic_dim(anchor, rtol=rtol))


def path_profile(
    f: Decoder,
    z_start: Tensor,
    z_end: Tensor,
    *,
    steps: int = 17,
    rtol: float = 1e-4,
    prior: Prior = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``lp`` against output arclength along the latent segment ``z_start -> z_end`` (``(m,)``);
    ``prior`` as in :func:`~lightning_memwatch.functional.density.dip_scores`.

    Returns:
        ``(s, lp, points)``: arclength from the start ``(T,)``, ``lp`` with ``k`` fixed at the
        start ``(T,)``, and the latent points ``(T, m)``.
    """
    spec = check_prior(prior)
    t = torch.linspace(0.0, 1.0, steps, device=z_start.device, dtype=z_start.dtype)[:, None]
    points = (1 - t) * z_start + t * z_end
    return arclength(f, points[None])[0], _anchored_lp(f, points, None, rtol, spec), points


def line_profile(
    f: Decoder,
    z: Tensor,
    *,
    half_width: float = 2.0,
    steps: int = 33,
    rtol: float = 1e-4,
    prior: Prior = None,
) -> tuple[Tensor, Tensor]:
    """``lp`` against signed output arclength along ``z + t v``, ``v`` the top right-singular
    vector of ``J(z)`` and ``|t| <= half_width`` (Feiszli (2017), sec. 4.2, fig. 3); ``prior`` as in
    :func:`~lightning_memwatch.functional.decay.decay_scores`.

    Returns:
        ``(s, lp)``: signed arclength from ``z`` and ``lp`` with ``k`` fixed at ``z``, ``(T,)``.
    """
    spec = check_prior(prior)
    dim = z.shape[0]
    head = map_jacobian_chunks(f, z[None], gram_singular_values_and_top_vector)
    s_anchor, v = head[:, :-dim], head[0, -dim:].nan_to_num(0.0).to(z.dtype)
    t = torch.linspace(-half_width, half_width, steps, device=z.device, dtype=z.dtype)[:, None]
    points = z + t * v
    arc = arclength(f, points[None])[0]
    return arc - arc[steps // 2], _anchored_lp(f, points, s_anchor, rtol, spec)
