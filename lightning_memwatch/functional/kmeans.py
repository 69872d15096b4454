"""Seeded k-means on a training reference: the cells of the data-copying test (Meehan et al. (2020),
sec. 3).

Everything is float64 on the inputs' device. Samples of any shape are flattened to ``(B, D)``.
Nearest centroids and samples are *searched* with the matrix-product expansion
``|x|^2 + |y|^2 - 2 x.y`` (about 10x faster than a direct difference on CPU); distances that are
*returned* are computed directly, ``sqrt(sum_d (x_d - y_d)^2)``: the expansion's cancellation
(about ``1e-15 |x|^2`` in float64) would turn the zero distance of an exact copy into a small
positive number and so break its ties.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memwatch.functional.checks import check_int

#: Pairwise distances computed at once: rows of a chunk times reference size.
CHUNK_ELEMENTS = 2**22


def flatten64(x: Tensor) -> Tensor:
    """``(B, ...)`` samples as a ``(B, D)`` float64 matrix (on their device)."""
    if not isinstance(x, Tensor) or x.ndim == 0:
        raise ValueError(f"Expected a (B, ...) batch of samples but got {type(x).__name__}")
    return x.reshape(len(x), -1).to(torch.float64)


def pairwise_distances(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean distances ``||x_i - y_j||`` of two batches, ``(B, N)`` float64.

    Example::

        >>> pairwise_distances(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        tensor([[5., 1.]], dtype=torch.float64)
    """
    x, y = flatten64(x), flatten64(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"Expected samples of one size to compare but got {x.shape[1]} and {y.shape[1]} "
            "values per sample"
        )
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def search_distances(x: Tensor, y: Tensor) -> Tensor:
    """Distances ``(B, N)`` for nearest-neighbour searches: float64 through the matrix-product
    expansion, accurate to about ``1e-15 |x|^2`` in the squared distance."""
    x, y = flatten64(x), flatten64(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"Expected samples of one size to compare but got {x.shape[1]} and {y.shape[1]} "
            "values per sample"
        )
    return torch.cdist(x, y, compute_mode="use_mm_for_euclid_dist")


def assign_cells(x: Tensor, centroids: Tensor) -> Tensor:
    """The cell of each sample: the index of its nearest centroid (first one on a tie), ``(B,)``.

    Example::

        >>> assign_cells(torch.tensor([[0.1], [0.9], [0.4]]), torch.tensor([[0.0], [1.0]]))
        tensor([0, 1, 0])
    """
    x = flatten64(x)
    rows = max(1, CHUNK_ELEMENTS // max(1, len(centroids)))
    labels = [search_distances(chunk, centroids).argmin(dim=1) for chunk in x.split(rows)]
    return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=x.device)


def _plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre uniformly, each next one
    with probability proportional to the squared distance to the nearest centre chosen so far.
    The draws are made on the generator's device, so a seed gives the same centres on any
    device the samples live on."""
    draw_device = generator.device
    first = torch.randint(len(x), (1,), generator=generator, device=draw_device)
    chosen = [int(first)]
    nearest = pairwise_distances(x, x[chosen[0]][None])[:, 0].square()
    for _ in range(1, k):
        weights = nearest.to(draw_device)
        if not weights.sum() > 0:  # every sample sits on a centre: any of them will do
            weights = torch.ones_like(weights)
        index = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, pairwise_distances(x, x[index][None])[:, 0].square())
    return x[chosen].clone()


def kmeans(
    x: Tensor,
    k: int,
    *,
    iterations: int = 50,
    init: str = "k-means++",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means of the samples ``x``: ``(centroids (k, D) float64, cells (B,))``.

    Seeded with k-means++ (``init="k-means++"``) or ``k`` distinct samples drawn uniformly
    (``init="random"``), then at most ``iterations`` Lloyd steps: each sample joins its nearest
    centroid, each centroid moves to the mean of its samples (a centroid left without samples
    stays where it is); it stops early once no sample changes cell, which gives what the
    remaining steps would. ``cells`` is :func:`assign_cells` of ``x`` to the returned
    centroids, so the cells are the centroids' Voronoi regions (Meehan et al. (2020), sec. 3
    partition the space with k-means on the training sample).

    Args:
        x: ``(B, ...)`` samples, ``B >= k``.
        k: number of cells.
        iterations: the most Lloyd steps.
        init: ``"k-means++"`` or ``"random"``.
        generator: the generator of the initial draws; ``None``: a CPU generator seeded 0, so
            the result is a function of ``x`` and ``k`` only.

    Example::

        >>> x = torch.tensor([[0.0], [0.2], [10.0], [10.2]])
        >>> centroids, cells = kmeans(x, 2)
        >>> sorted(centroids.flatten().tolist())
        [0.1, 10.1]
        >>> bool(cells[0] == cells[1] != cells[2] == cells[3])
        True
    """
    x = flatten64(x)
    check_int("k", k)
    check_int("iterations", iterations, minimum=0)
    if len(x) < k:
        raise ValueError(f"Expected at least k={k} samples to make {k} cells but got {len(x)}")
    if init not in ("k-means++", "random"):
        raise ValueError(f"Expected `init` to be 'k-means++' or 'random' but got {init!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if init == "random":
        order = torch.randperm(len(x), generator=generator, device=generator.device)
        centroids = x[order[:k].to(x.device)].clone()
    else:
        centroids = _plus_plus(x, k, generator)
    cells = assign_cells(x, centroids)
    for _ in range(iterations):
        sums = torch.zeros_like(centroids).index_add_(0, cells, x)
        counts = torch.bincount(cells, minlength=k).to(x.dtype)[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        new_cells = assign_cells(x, centroids)
        if torch.equal(new_cells, cells):
            break
        cells = new_cells
    return centroids, cells  # cells = assign_cells(x, centroids) on every way out of the loop
