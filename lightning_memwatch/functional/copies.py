"""Near-copies of training samples: the distance-ratio test of the diffusion memorization studies.

A generated sample ``x`` is a near-copy of a training sample when its nearest training sample is
much closer than its second nearest::

    d_1(x) / d_2(x) < 1/3,

``d_1``, ``d_2`` the Euclidean distances from ``x`` to its nearest and second-nearest training
samples (flattened). Yoon et al. 2023 ("Diffusion probabilistic models generalize when they fail
to memorize", ICML 2023 workshop SPIGM) introduced it for diffusion models; Gu et al. 2023
(arXiv:2310.02664, sec. 2) and Bonnaire, Urfin, Biroli & Mezard 2025 (arXiv:2505.17638) use it
as the memorization ratio. Unlike the copy test of
:func:`~lightning_memwatch.functional.data_copying.copied` (closer to a training sample than that
sample's own nearest neighbour) it needs no training-set statistics, only the two distances.
Copying in diffusion models is documented by Carlini et al. 2023 (arXiv:2301.13188) and
Somepalli et al. 2023 (arXiv:2212.03860). Float64 on the inputs' device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_memwatch.functional.kmeans import CHUNK_ELEMENTS, flatten64, search_distances

#: The ratio ``d_1 / d_2`` under which a sample counts as a near-copy (Yoon et al. 2023).
NEAR_COPY_RATIO = 1.0 / 3.0


def two_nearest_distances(x: Tensor, reference: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``d_1``, ``d_2`` (``(B,)`` float64) and the index of the nearest reference sample
    (``(B,)`` long) for each sample of ``x``.

    The two nearest are searched with the matrix-product expansion, then their distances are
    computed directly, so an exact copy is at distance 0. NaN samples give NaN distances and
    index ``-1``. ``reference`` needs two samples or more.

    Example::

        >>> reference = torch.tensor([[0.0], [1.0], [5.0]])
        >>> two_nearest_distances(torch.tensor([[0.9]]), reference)
        (tensor([0.1000], dtype=torch.float64), tensor([0.9000], dtype=torch.float64), tensor([1]))
    """
    x, reference = flatten64(x), flatten64(reference)
    if len(reference) < 2:
        raise ValueError(
            f"Expected at least 2 reference samples to find the second nearest but got "
            f"{len(reference)}"
        )
    if x.shape[1] != reference.shape[1]:
        raise ValueError(
            f"Expected samples of one size to compare but got {x.shape[1]} and "
            f"{reference.shape[1]} values per sample"
        )
    rows = max(1, CHUNK_ELEMENTS // len(reference))
    first, second, nearest = [], [], []
    for chunk in x.split(rows):
        d = search_distances(chunk, reference)
        order = d.masked_fill(d.isnan(), math.inf).topk(2, dim=1, largest=False).indices
        nan = chunk.isnan().any(dim=1)
        e0, e1 = ((chunk - reference[order[:, i]]).norm(dim=1) for i in (0, 1))
        # the search may order two near-equal distances wrongly by round-off: the exact decide
        swap = e1 < e0
        first.append(torch.where(nan, math.nan, torch.where(swap, e1, e0)))
        second.append(torch.where(nan, math.nan, torch.where(swap, e0, e1)))
        nearest.append(torch.where(nan, -1, torch.where(swap, order[:, 1], order[:, 0])))
    if not first:
        empty = x.new_zeros(0)
        return empty, empty, torch.zeros(0, dtype=torch.long, device=x.device)
    return torch.cat(first), torch.cat(second), torch.cat(nearest)


def near_copies(x: Tensor, reference: Tensor, *, ratio: float = NEAR_COPY_RATIO) -> Tensor:
    """Whether each sample is a near-copy of a reference sample: ``d_1 / d_2 < ratio``,
    ``(B,)`` bool (:func:`two_nearest_distances`). ``d_1 = 0`` (an exact copy) counts, two
    samples at equal distance ``d_1 = d_2 = 0`` do not; a NaN sample is not a copy.

    Example::

        >>> reference = torch.tensor([[0.0], [1.0], [3.0]])
        >>> near_copies(torch.tensor([[0.1], [0.5], [2.9]]), reference).tolist()
        [True, False, True]
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"Expected `ratio` to be a number in (0, 1] but got {ratio!r}")
    d1, d2, _ = two_nearest_distances(x, reference)
    return d1 < ratio * d2


def near_copy_share(x: Tensor, reference: Tensor, *, ratio: float = NEAR_COPY_RATIO) -> Tensor:
    """The share of the finite samples of ``x`` that are :func:`near_copies` of ``reference``:
    0-dim float64, NaN when no sample is finite.

    Example::

        >>> reference = torch.tensor([[0.0], [1.0], [3.0]])
        >>> near_copy_share(torch.tensor([[0.1], [0.5], [2.9], [2.0]]), reference).item()
        0.5
    """
    flags = near_copies(x, reference, ratio=ratio)
    finite = torch.isfinite(flatten64(x)).all(dim=1)
    if not bool(finite.any()):
        return flags.new_tensor(math.nan, dtype=torch.float64)
    return flags[finite].to(torch.float64).mean()
