"""The per-sample inputs of the data-copying test, shared by the monitors that compare samples
with a training reference (``SampleMonitor``, ``DiffusionMonitor``'s samples family).

For a training reference ``T`` (flat vectors, the same on every rank) and batches of samples to
test (held-out and generated, this rank's shard): ``cells`` seeded k-means cells of ``T``
(refit at every call: with a trainable feature map the reference moves), each sample's cell, its
distance to the nearest training sample of its cell (Meehan et al. (2020), sec. 3) and whether it
is :func:`~lightning_memwatch.functional.data_copying.copied`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memwatch.functional.data_copying import copied
from lightning_memwatch.functional.kmeans import assign_cells, kmeans
from lightning_memwatch.functional.neighbours import nearest_neighbours


def copy_measurements(
    train: Tensor, batches: dict[str, Tensor], cells: int, seed: int
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Per batch name: ``(distances, cells, copied)``, ``(B,)`` each, for ``DataCopying.update``."""
    centroids, train_cells = kmeans(train, cells, generator=torch.Generator().manual_seed(seed))
    own, _ = nearest_neighbours(train, train, exclude_self=True)
    out = {}
    for name, x in batches.items():
        x_cells = assign_cells(x, centroids)
        d, _ = nearest_neighbours(x, train, x_cells=x_cells, reference_cells=train_cells)
        out[name] = (d, x_cells, copied(train, x, train_distances=own))
    return out
