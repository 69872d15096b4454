"""``lp`` along one latent path or line, for plotting (feiszli fig. 3-5).

The scores of :mod:`~lightning_memwatch.functional.density` read ``lp`` at a few points; these
profiles sample it along the whole path or line, with the rank ``k`` fixed at the anchor as the
scores do (``papers/feiszli_latent_geometry.txt`` procedures 1 and 2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memwatch.functional.density import induced_log_density
from lightning_memwatch.functional.jacobian import Decoder, map_jacobian_chunks
from lightning_memwatch.functional.paths import arclength
from lightning_memwatch.functional.spectrum import (
    gram_singular_values_and_top_vector,
    intrinsic_dim,
)


def _anchored_lp(f: Decoder, points: Tensor, s_anchor: Tensor, rtol: float) -> Tensor:
    k = int(intrinsic_dim(s_anchor, rtol=rtol).clamp_min(0))
    return induced_log_density(f, points, k=k, rtol=rtol)


def path_profile(
    f: Decoder, z_start: Tensor, z_end: Tensor, *, steps: int = 17, rtol: float = 1e-4
) -> tuple[Tensor, Tensor, Tensor]:
    """``lp`` against output arclength along the latent segment ``z_start -> z_end`` (``(m,)``).

    Returns:
        ``(s, lp, points)``: arclength from the start ``(T,)``, ``lp`` with ``k`` fixed at the
        start ``(T,)``, and the latent points ``(T, m)``.
    """
    t = torch.linspace(0.0, 1.0, steps, device=z_start.device, dtype=z_start.dtype)[:, None]
    points = (1 - t) * z_start + t * z_end
    head = map_jacobian_chunks(f, z_start[None], gram_singular_values_and_top_vector)
    s_anchor = head[:, : -z_start.shape[0]]
    return arclength(f, points[None])[0], _anchored_lp(f, points, s_anchor, rtol), points


def line_profile(
    f: Decoder, z: Tensor, *, half_width: float = 2.0, steps: int = 33, rtol: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """``lp`` against signed output arclength along ``z + t v``, ``v`` the top right-singular
    vector of ``J(z)`` and ``|t| <= half_width`` (feiszli §4.2, fig. 3).

    Returns:
        ``(s, lp)``: signed arclength from ``z`` and ``lp`` with ``k`` fixed at ``z``, ``(T,)``.
    """
    dim = z.shape[0]
    head = map_jacobian_chunks(f, z[None], gram_singular_values_and_top_vector)
    s_anchor, v = head[:, :-dim], head[0, -dim:].nan_to_num(0.0).to(z.dtype)
    t = torch.linspace(-half_width, half_width, steps, device=z.device, dtype=z.dtype)[:, None]
    points = z + t * v
    arc = arclength(f, points[None])[0]
    return arc - arc[steps // 2], _anchored_lp(f, points, s_anchor, rtol)
