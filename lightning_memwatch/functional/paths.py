"""Latent paths and the output-space arclength along them (feiszli procedures 1 and 2).

``papers/feiszli_latent_geometry.txt`` §4.1: densities along a latent path are plotted against
the arclength ``s`` of its image, ``s_k = sum_{j<k} |f(z_{j+1}) - f(z_j)|`` (summed L2 chords,
outputs flattened), and read off between samples by interpolation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memwatch.functional.jacobian import Decoder, differentiable_context


def decode(f: Decoder, z: Tensor) -> Tensor:
    """Plain forward pass, outputs flattened: ``(B, n)``; no graph, any outer grad mode."""
    with differentiable_context():
        return f(z).reshape(z.shape[0], -1)


def arclength(f: Decoder, points: Tensor) -> Tensor:
    """Cumulative output arclength along rows of samples ``(..., T, m)``: ``(..., T)``, float64.

    Summed L2 chords ``|f(z_{k+1}) - f(z_k)|`` (feiszli procedure 1, step 3), ``0`` at the first
    sample; one decoder call for all samples.
    """
    x = decode(f, points.reshape(-1, points.shape[-1])).reshape(*points.shape[:-1], -1)
    chords = x.diff(dim=-2).to(torch.float64).norm(dim=-1)
    return torch.cat([torch.zeros_like(chords[..., :1]), chords.cumsum(dim=-1)], dim=-1)


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Row-wise ``np.interp``: ``fp`` linear in ``xp`` (non-decreasing, ``(..., T)``) at ``x``.

    Takes the last sample with ``xp <= x`` and the next one; a zero-width interval takes its
    left value; ``x`` outside ``[xp_0, xp_T]`` is clamped to the end values.
    """
    xq = x.unsqueeze(-1).contiguous()
    idx = torch.searchsorted(xp.contiguous(), xq, right=True) - 1
    idx = idx.clamp(0, xp.shape[-1] - 2)
    x0, x1 = xp.gather(-1, idx), xp.gather(-1, idx + 1)
    f0, f1 = fp.gather(-1, idx), fp.gather(-1, idx + 1)
    width = x1 - x0
    weight = torch.where(width > 0, (xq - x0) / torch.where(width > 0, width, 1.0), 0.0)
    return (f0 + weight.clamp(0.0, 1.0) * (f1 - f0)).squeeze(-1)
