"""What GeometryMonitor's spectrum pass computes at each probe latent: the exact spectrum, or
its top ``k`` values, with the top right-singular vector that the decay lines follow.

``top_k="auto"``: from :data:`TOP_K_FROM` latent dimensions on, the top :data:`TOP_K` by
randomized block Krylov (:func:`~lightning_memwatch.functional.top_singular_values`; measured
at m = 512, k = 32: 8.1x faster than the exact spectrum on an MLP decoder, 8.8x on a conv
decoder); below, the exact spectrum (5-52 ms a point up to m = 256, and at least as accurate).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memwatch.functional.jacobian import Decoder, map_jacobian_chunks
from lightning_memwatch.functional.spectrum import gram_singular_values_and_top_vector
from lightning_memwatch.functional.topk import top_singular_values_and_vector

TOP_K_FROM = 512
TOP_K = 32


def spectrum_size(top_k: int | str | None, m: int, n: int) -> int | None:
    """How many singular values the pass computes for a decoder ``R^m -> R^n``: ``None`` for
    all of them (exact), else the top ``k`` (only when ``k < min(m, n)``)."""
    if top_k == "auto":
        top_k = TOP_K if m >= TOP_K_FROM else None
    return None if top_k is None or top_k >= min(m, n) else int(top_k)


def spectral_head(f: Decoder, z: Tensor, k: int | None) -> Tensor:
    """``(s, v_1)`` per point, ``(B, r + m)`` float64 (``r = min(n, m)``, or ``k``): the layout
    of :func:`~lightning_memwatch.functional.spectrum.gram_singular_values_and_top_vector`,
    which the density functions take as ``head``."""
    if k is None:
        return map_jacobian_chunks(f, z, gram_singular_values_and_top_vector)
    values, vector = top_singular_values_and_vector(f, z, k)
    return torch.cat([values, vector.to(values)], dim=1)
