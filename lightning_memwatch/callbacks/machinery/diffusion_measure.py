"""DiffusionMonitor's measurement of one slice of its probe: the loss, spectrum and samples
families, each timed, each rank on its shard (the rolling table gathers the rows)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_memwatch.callbacks.machinery.copying import copy_measurements
from lightning_memwatch.callbacks.machinery.diffusion_probes import (
    LOSS_STREAM,
    SPECTRUM_STREAM,
    row_noise,
    start_noise,
)
from lightning_memwatch.callbacks.machinery.monitor import SPLITS
from lightning_memwatch.callbacks.machinery.probes import shard
from lightning_memwatch.functional.copies import near_copies
from lightning_memwatch.functional.ddim import ddim_sample
from lightning_memwatch.functional.denoiser_spectrum import x0_estimator, x0_singular_values
from lightning_memwatch.functional.diffusion import denoising_losses, q_sample
from lightning_memwatch.functional.jacobian import map_chunks
from lightning_memwatch.functional.neighbours import nearest_neighbours
from lightning_memwatch.metrics.diffusion import TIMESTEP_STATS
from lightning_memwatch.viz import as_images, global_step, pairs_grid, tensorboard_writer

#: Generated | nearest training sample pairs shown in TensorBoard.
PAIRS = 8
#: Denoiser inputs per forward pass of the loss family (probe rows times grid timesteps).
LOSS_BATCH = 512


def _labels(monitor: Any, split: str, rows: Tensor) -> Tensor | None:
    """The class labels of the probe ``rows`` of ``split``, if the denoiser takes labels."""
    return None if monitor.labels is None else monitor.labels[split][rows.cpu()]


def split_losses(
    monitor: Any, x0: Tensor, rows: Tensor, labels: Tensor | None, split: str
) -> Tensor:
    """``(B, K)`` losses of the probe rows ``rows`` (inputs ``x0``) at the loss grid."""
    grid = monitor.loss_grid
    per_call = max(1, LOSS_BATCH // len(grid))

    def losses(positions: Tensor) -> Tensor:
        index = positions[:, 0]
        noise = row_noise(monitor.seed, LOSS_STREAM, rows[index.cpu()], x0.shape[1:], len(grid))
        call = monitor.call
        if labels is not None:
            call = call.with_labels(labels[index].repeat_interleave(len(grid)))
        x = x0[index]
        return denoising_losses(
            call, x, noise.to(x), grid, monitor.schedule.alphas_cumprod, monitor.prediction_type
        )

    positions = torch.arange(len(x0), device=x0.device)[:, None]
    if not len(x0):
        return torch.zeros(0, len(grid), dtype=torch.float64, device=x0.device)
    return map_chunks(losses, positions, per_call)


def split_spectra(
    monitor: Any, x0: Tensor, rows: Tensor, labels: Tensor | None, split: str
) -> list[Tensor]:
    """One ``(B, r)`` spectrum per spectrum timestep, at the rows ``rows`` noised to it (points
    of one class label together, so every chunk of points shares a label)."""
    noise = row_noise(monitor.seed, SPECTRUM_STREAM, rows.cpu(), x0.shape[1:])[:, 0].to(x0)
    abar, prediction = monitor.schedule.alphas_cumprod, monitor.prediction_type
    groups = (
        [(None, torch.arange(len(x0)))]
        if labels is None
        else [
            (int(label), torch.nonzero(labels.cpu() == label).flatten())
            for label in labels.unique()
        ]
    )
    spectra = []
    for t in monitor.spectrum_grid:
        x_t = q_sample(x0, t, noise, abar)
        values: Tensor | None = None
        for label, index in groups:
            call = monitor.call if label is None else monitor.call.with_labels(label)
            s = x0_singular_values(
                x0_estimator(call, t, abar, prediction),
                x_t[index.to(x_t.device)],
                projection=monitor.projection,
            )
            if values is None:
                values = s.new_full((len(x0), s.shape[1]), math.nan)
            values[index.to(s.device)] = s
        spectra.append(values)
    return spectra


def generate(monitor: Any, count: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The first ``count`` generated samples: the built-in DDIM from the fixed starting noise."""
    shape = monitor.inputs["train"].shape[1:]
    noise = start_noise(monitor.seed, monitor.num_generated, shape)[:count].to(device, dtype)
    call = monitor.call
    if monitor.labels is not None:  # the training probe's labels, in turn
        labels = monitor.labels["train"]
        call = call.with_labels(labels[torch.arange(count) % len(labels)].to(device))
    return ddim_sample(
        call,
        noise,
        monitor.schedule.alphas_cumprod,
        monitor.prediction_type,
        steps=monitor.sampler_steps,
    )


SAMPLE_KEYS = (
    "ct",
    "copy_fraction",
    "heldout_copy_fraction",
    "near_copy_share",
    "heldout_near_copy_share",
    "nonfinite",
)


def logged_keys(monitor: Any) -> frozenset[str]:
    """Every key ``monitor`` can log with its families (see ``DiffusionMonitor``)."""
    keys = set()
    for family in monitor.families:
        keys |= {f"memwatch/{family}/{k}" for k in ("seconds", "probe_size")}
    if monitor.loss_family in monitor.families:
        metric, family = monitor.loss_metric, monitor.loss_family
        keys |= {f"memwatch/{family}/{k}" for k in (*metric.stats, "relative_gap")}
        keys |= {
            f"memwatch/{family}/{name}/{stat}"
            for name in metric.descriptors[1:]
            for stat in TIMESTEP_STATS
        }
    if monitor.spectrum_family in monitor.families:
        metric, family = monitor.spectrum_metric, monitor.spectrum_family
        keys |= {
            f"memwatch/{family}/{metric.key(d, s)}"
            for d in metric.descriptors
            for s in metric.stats
        }
    for family in (monitor.loss_family, monitor.spectrum_family):
        if family in monitor.families:
            keys |= {f"memwatch/{family}/{k}" for k in ("nonfinite", "staleness")}
    if monitor.samples_family in monitor.families:
        keys |= {f"memwatch/{monitor.samples_family}/{k}" for k in SAMPLE_KEYS}
    return frozenset(keys)


def measure_diffusion(
    monitor: Any,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    inputs: dict[str, Tensor],
    rows: Tensor,
) -> dict[str, dict[str, Any]]:
    """:meth:`DiffusionMonitor.measure <lightning_memwatch.callbacks.DiffusionMonitor.measure>`:
    each family of ``monitor`` on probe ``rows`` (``inputs`` per split), this rank's shard;
    returns the scalars to log per family."""
    size = len(inputs["train"])
    rank, world = trainer.global_rank, trainer.world_size
    mine = shard(rows, rank, world)
    writer = tensorboard_writer(trainer)
    shown: list[Tensor] = []

    def per_split(family: str, metric: Any, values: Callable[..., Any]) -> dict[str, Tensor]:
        for done, split in enumerate(SPLITS, 1):
            monitor.progress(family, done, len(SPLITS), unit="split")
            x0 = shard(inputs[split], rank, world)
            if len(x0):  # a rank without a sample of its own still takes part in the sync
                metric.update(
                    values(monitor, x0, mine, _labels(monitor, split, mine), split), split
                )
        return monitor.rolled(trainer, family, metric, mine)

    def loss() -> dict[str, Tensor]:
        with torch.no_grad():
            return per_split(monitor.loss_family, monitor.loss_metric, split_losses)

    def spectrum() -> dict[str, Tensor]:
        return per_split(monitor.spectrum_family, monitor.spectrum_metric, split_spectra)

    def samples() -> dict[str, Tensor]:
        count = math.ceil(monitor.num_generated * size / monitor.effective_probe_size)
        with torch.no_grad():
            reference = monitor.reference.to(inputs["train"])
            generated = generate(monitor, count, reference.device, reference.dtype)
            batches = {
                "heldout": shard(inputs["val"], rank, world),
                "generated": shard(generated, rank, world),
            }
            batches = {name: x.reshape(len(x), -1).to(torch.float64) for name, x in batches.items()}
            train = reference.reshape(len(reference), -1).to(torch.float64)
            found = copy_measurements(train, batches, monitor.cells, monitor.seed)
            for name, (d, x_cells, flags) in found.items():
                near = near_copies(batches[name], train)
                monitor.samples_metric.update(d, x_cells, flags, name, near)
            if writer is not None:
                x = shard(generated, rank, world)[:PAIRS]
                nearest = nearest_neighbours(x, train)[1]
                shown.extend([x, reference[nearest.clamp(min=0)]])
        return monitor.samples_metric.scalars()

    def write_samples() -> None:
        images = as_images(torch.cat(shown))
        if images is not None:
            grid = pairs_grid(*images.chunk(2), pairs_per_row=PAIRS)
            writer.add_image(
                f"memwatch/{monitor.samples_family}/nearest", grid, global_step(trainer)
            )

    steps = {
        monitor.loss_family: loss,
        monitor.spectrum_family: spectrum,
        monitor.samples_family: samples,
    }
    if writer is not None:
        monitor.write_layout_once(writer)
    writes = {monitor.samples_family: write_samples if writer is not None else None}
    return {
        family: monitor.timed(family, size, steps[family], writes.get(family))
        for family in monitor.families
    }
