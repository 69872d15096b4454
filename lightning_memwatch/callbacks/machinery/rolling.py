"""The rolling probe: the latest per-sample value of every probe sample, whichever measurement
made it.

A measurement may cover only a slice of the probe (the cost budget sizes it). Each family's
per-sample values of that slice are written into a table of ``probe_size`` rows per split, and
the logged train / validation statistics are taken over every row measured so far, so a curve
point arrives at every measurement for a fraction of a whole-probe cost. The table also keeps the
epoch at which each row was measured; ``memwatch/<family>/staleness`` is the age, in epochs, of
the oldest row in use.

Under DDP every rank measures its shard of the slice; :func:`gather_rows` gives every rank the
whole slice, the table is the same on every rank, and each rank hands the metric only its shard
of the table, so the metric's own gather (torchmetrics ``cat`` states) sees every row once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_memwatch.metrics.train_val import SPLITS, TrainValGap


def slice_indices(cursor: int, size: int, probe_size: int) -> Tensor:
    """Rows ``cursor, cursor + 1, ...`` (``size`` of them, wrapping around the probe)."""
    return (torch.arange(size) + cursor) % probe_size


def gather_rows(strategy: Any, rows: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Every rank's ``(rows, values)`` on every rank (rows ``(b,)``, values ``(b, ...)``; the
    ranks may hold different ``b``, zero included)."""
    world = getattr(strategy, "world_size", 1)
    if world == 1:
        return rows, values
    device = values.device
    count = torch.tensor([len(rows)], device=device)
    most = int(strategy.all_gather(count).max())
    pad = most - len(rows)
    padded_rows = torch.cat([rows.to(device), torch.full((pad,), -1, device=device)])
    filler = torch.full((pad, *values.shape[1:]), torch.nan, dtype=values.dtype, device=device)
    gathered_rows = strategy.all_gather(padded_rows).reshape(-1)
    gathered = strategy.all_gather(torch.cat([values, filler])).reshape(-1, *values.shape[1:])
    keep = gathered_rows >= 0
    return gathered_rows[keep], gathered[keep]


class RollingTable:
    """Per split and descriptor, the latest value of each probe row and the epoch it was
    measured at (``-1``: not yet)."""

    def __init__(self, probe_size: int) -> None:
        self.probe_size = probe_size
        self.values: dict[str, dict[str, Tensor]] = {}
        self.epochs: dict[str, Tensor] = {
            split: torch.full((probe_size,), -1, dtype=torch.long) for split in SPLITS
        }

    def update(self, split: str, rows: Tensor, values: dict[str, Tensor], epoch: int) -> None:
        rows = rows.to("cpu", torch.long)
        for name, value in values.items():
            table = self.values.setdefault(name, {})
            if split not in table:
                table[split] = torch.full((self.probe_size,), torch.nan, dtype=torch.float64)
            table[split][rows] = value.detach().to("cpu", torch.float64).reshape(-1)
        self.epochs[split][rows] = epoch

    def measured(self, split: str) -> Tensor:
        return self.epochs[split] >= 0

    def column(self, name: str, split: str) -> Tensor:
        """The measured rows' values of descriptor ``name`` (probe order)."""
        return self.values[name][split][self.measured(split)]

    def staleness(self, epoch: int) -> float:
        """Epochs since the oldest measured row of either split was measured."""
        oldest = [int(e[e >= 0].min()) for e in self.epochs.values() if bool((e >= 0).any())]
        return float(epoch - min(oldest)) if oldest else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {
            "values": {n: {s: v.clone() for s, v in t.items()} for n, t in self.values.items()},
            "epochs": {split: e.clone() for split, e in self.epochs.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = {n: {s: v.clone() for s, v in t.items()} for n, t in state["values"].items()}
        self.epochs = {split: e.clone() for split, e in state["epochs"].items()}


def roll(
    metric: TrainValGap,
    table: RollingTable,
    rows: dict[str, Tensor],
    strategy: Any,
    epoch: int,
) -> dict[str, Tensor]:
    """Move what ``metric`` was just updated with (this rank's ``rows`` of each split, in
    order) into ``table``, then compute ``metric`` over the table's measured rows.

    Returns :meth:`TrainValGap.scalars` of the whole table (means, gaps and KS p-values over
    every probe sample measured so far).
    """
    rank, world = getattr(strategy, "global_rank", 0), getattr(strategy, "world_size", 1)
    for split in SPLITS:
        fresh = torch.stack([metric.samples(d, split) for d in metric.descriptors], dim=-1)
        mine = rows[split].to(fresh.device)
        all_rows, all_values = gather_rows(strategy, mine, fresh)
        values = {d: all_values[:, i] for i, d in enumerate(metric.descriptors)}
        table.update(split, all_rows, values, epoch)
    metric.set_samples(
        {
            split: {
                d: table.column(d, split)[rank::world].to(metric.device) for d in metric.descriptors
            }
            for split in SPLITS
        }
    )
    return metric.scalars()
