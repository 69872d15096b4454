"""Nearest training samples and a fixed PCA projection, for the sample-based copying tests.

float64 on the inputs' device; samples of any shape are flattened (:func:`flatten64`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.kmeans import CHUNK_ELEMENTS, flatten64, search_distances


def nearest_neighbours(
    x: Tensor,
    reference: Tensor,
    *,
    x_cells: Tensor | None = None,
    reference_cells: Tensor | None = None,
    exclude_self: bool = False,
) -> tuple[Tensor, Tensor]:
    """Distance to, and index of, each sample's nearest reference sample: ``(B,)`` float64 and
    ``(B,)`` long.

    ``d(x) = min_{t in T} ||x - t||`` (Meehan et al. (2020), sec. 3, the distance to the training
    sample ``T``). With ``x_cells`` and ``reference_cells`` the minimum runs over the reference
    samples of ``x``'s own cell only, as the authors' reference code does it cell by cell; a sample
    whose cell holds no reference sample gets ``inf`` and index ``-1``. ``exclude_self=True``
    (``x`` is the reference itself) leaves each sample's own row out: the distance to its
    nearest *other* reference sample. NaN samples give NaN distances and index ``-1``.

    The nearest sample is searched with the matrix-product expansion, then its distance is
    computed directly (:mod:`~lightning_memwatch.functional.kmeans`), so an exact copy is at
    distance 0.

    Example::

        >>> reference = torch.tensor([[0.0], [1.0], [5.0]])
        >>> nearest_neighbours(torch.tensor([[0.9], [4.0]]), reference)
        (tensor([0.1000, 1.0000], dtype=torch.float64), tensor([1, 2]))
        >>> nearest_neighbours(reference, reference, exclude_self=True)[0]
        tensor([1., 1., 4.], dtype=torch.float64)
    """
    x, reference = flatten64(x), flatten64(reference)
    if len(reference) == 0:
        raise ValueError("Expected a non-empty reference to find nearest neighbours in")
    if (x_cells is None) != (reference_cells is None):
        raise ValueError("Expected both `x_cells` and `reference_cells`, or neither")
    if exclude_self and len(x) != len(reference):
        raise ValueError(
            f"Expected `exclude_self` with `x` the reference itself but got {len(x)} samples "
            f"for a reference of {len(reference)}"
        )
    rows = max(1, CHUNK_ELEMENTS // len(reference))
    distances, indices = [], []
    for start in range(0, len(x), rows):
        chunk = x[start : start + rows]
        d = search_distances(chunk, reference)
        if x_cells is not None:
            other = x_cells[start : start + rows, None] != reference_cells[None, :]
            d = d.masked_fill(other, math.inf)
        if exclude_self:
            own = torch.arange(start, start + len(d), device=d.device)
            d[torch.arange(len(d), device=d.device), own] = math.inf
        nan = chunk.isnan().any(dim=1)
        value, index = d.masked_fill(d.isnan(), math.inf).min(dim=1)
        exact = (chunk - reference[index]).norm(dim=1)
        missing = torch.isinf(value) & ~nan
        distances.append(torch.where(missing, math.inf, torch.where(nan, math.nan, exact)))
        indices.append(torch.where(missing | nan, -1, index))
    if not distances:
        return x.new_zeros(0), torch.zeros(0, dtype=torch.long, device=x.device)
    return torch.cat(distances), torch.cat(indices)


def pca_projection(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The top-``dim`` principal directions of the samples ``x``: ``(mean (D,),
    components (dim, D))``, float64.

    The components are the right singular vectors of the centred ``(B, D)`` matrix with the
    ``dim`` largest singular values (signs fixed: each component's largest-magnitude entry is
    positive, so the projection is a function of ``x`` only). Fit it once on the training
    reference and keep it; :func:`project` applies it.

    Example::

        >>> x = torch.tensor([[-2.0, 5.0], [2.0, 5.0], [0.0, 6.0], [0.0, 4.0]])
        >>> mean, components = pca_projection(x, 1)
        >>> mean.tolist(), components.abs().tolist()
        ([0.0, 5.0], [[1.0, 0.0]])
    """
    x = flatten64(x)
    check_int("dim", dim)
    if dim > min(x.shape):
        raise ValueError(
            f"Expected `dim` to be at most min(samples, values per sample) = {min(x.shape)} but "
            f"got {dim}: lower the PCA dimension or use more reference samples"
        )
    mean = x.mean(dim=0)
    components = torch.linalg.svd(x - mean, full_matrices=False)[2][:dim]
    largest = components.abs().argmax(dim=1)
    signs = torch.sign(components.gather(1, largest[:, None]))
    return mean, components * torch.where(signs == 0, 1.0, signs)


def project(x: Tensor, projection: tuple[Tensor, Tensor] | None) -> Tensor:
    """``(x - mean) @ components.T`` (``(B, dim)``), or the flattened ``x`` when ``projection``
    is ``None``.

    Example::

        >>> project(torch.tensor([[3.0, 4.0]]), (torch.zeros(2), torch.tensor([[0.0, 1.0]])))
        tensor([[4.]], dtype=torch.float64)
    """
    x = flatten64(x)
    if projection is None:
        return x
    mean, components = projection
    return (x - mean.to(x)) @ components.to(x).T
