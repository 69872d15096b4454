"""What DiffusionMonitor fixes once for a run: the timestep grids, the noise of every probe
sample, the starting noise of the generated samples, the probe's class labels and the training
reference of the copy tests.

Noise is never stored: it is drawn from generators of its own seeded by the monitor's ``seed``,
the stream (loss, spectrum, generated samples) and the probe row, so that a probe sample gets the
same noise at every measurement whichever slice of the probe it falls in, after a resume, and on
whichever DDP rank measures it; training's RNG streams are never touched. Row ``r`` of the
training probe and row ``r`` of the validation probe get the same noise (common random numbers):
at a large timestep a sample's loss is mostly its noise draw, and with draws of their own a
chance difference between the two splits' draws would stay for the whole run (measured on the
generalizing example run at ``t = 0.7 T``: a Cliff's delta of +0.45 that no training moved).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor

from lightning_memwatch.callbacks.machinery.drawing import draw_distinct
from lightning_memwatch.callbacks.machinery.probes import (
    gather_inputs,
    seeded_rng,
    train_loader,
    val_loader,
)
from lightning_memwatch.callbacks.machinery.samplers import probe_candidates

#: Seed streams of the monitor's draws.
LOSS_STREAM, SPECTRUM_STREAM, SAMPLES_STREAM = 0, 1, 2

Timesteps = Sequence[int | float]


def check_timesteps(argument: str, timesteps: Any) -> tuple[int | float, ...]:
    """A non-empty sequence of distinct integer timesteps (``>= 0``) or fractions of the
    training timesteps in ``(0, 1)``, as a tuple."""
    values = () if isinstance(timesteps, (str, bytes)) else tuple(timesteps)

    def valid(v: Any) -> bool:
        if isinstance(v, bool):
            return False
        return (isinstance(v, int) and v >= 0) or (isinstance(v, float) and 0 < v < 1)

    if not values or not all(valid(v) for v in values) or len(set(values)) != len(values):
        raise ValueError(
            f"Expected `{argument}` to be distinct integer timesteps (>= 0) or fractions of the "
            f"training timesteps in (0, 1) but got {timesteps!r}"
        )
    return values


def timestep_name(value: int | float) -> str:
    """The key name of a grid timestep: ``"100"`` for the integer 100, ``"0.05"`` for a fraction.

    Example::

        >>> timestep_name(100), timestep_name(0.05)
        ('100', '0.05')
    """
    return str(value) if isinstance(value, int) else f"{value:g}"


def resolve_timesteps(argument: str, values: Timesteps, num_train_timesteps: int) -> list[int]:
    """The integer timesteps of ``values`` for a schedule of ``T`` timesteps: an integer as it
    is (it must be below ``T``), a fraction ``f`` as ``round(f T)`` (at most ``T - 1``).

    Example::

        >>> resolve_timesteps("timesteps", (0.05, 0.5, 10), 1000)
        [50, 500, 10]
    """
    out = []
    for value in values:
        if isinstance(value, float):
            out.append(min(round(value * num_train_timesteps), num_train_timesteps - 1))
        elif value >= num_train_timesteps:
            raise ValueError(
                f"Expected DiffusionMonitor's `{argument}` below the schedule's "
                f"{num_train_timesteps} training timesteps but got {value}: pass smaller "
                "timesteps or fractions in (0, 1)"
            )
        else:
            out.append(int(value))
    return out


def _row_seed(seed: int, stream: int, row: int) -> int:
    return ((seed * 8 + stream) * 2**24 + row) % 2**63


def row_noise(seed: int, stream: int, rows: Tensor, shape: Sequence[int], count: int = 1) -> Tensor:
    """``(len(rows), count, *shape)`` standard normal noise, float32 on the CPU: the noise of
    probe row ``r`` (of either split) is drawn from a generator seeded by ``(seed, stream, r)``
    alone, so it is the same at every call."""
    draws = [
        torch.randn(
            count,
            *shape,
            generator=torch.Generator().manual_seed(_row_seed(seed, stream, int(r))),
        )
        for r in rows.tolist()
    ]
    return torch.stack(draws) if draws else torch.zeros(0, count, *shape)


def start_noise(seed: int, count: int, shape: Sequence[int]) -> Tensor:
    """The starting noise ``x_T`` of the ``count`` generated samples, float32 on the CPU, from a
    generator of its own seeded by ``seed``: the same samples at every measurement."""
    generator = torch.Generator().manual_seed(_row_seed(seed, SAMPLES_STREAM, 0))
    return torch.randn(count, *shape, generator=generator)


def _split_candidates(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> Any:
    loaders = (
        train_loader(trainer, pl_module) if split == "train" else val_loader(trainer, pl_module)
    )
    return probe_candidates(trainer, loaders, split)


def gather_labels(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    indices: dict[str, Tensor],
    key: Any,
    seed: int,
) -> dict[str, Tensor]:
    """The class label of every probe sample (``key`` picks it out of a dataset sample, as
    ``input_key`` picks the input), ``(P,)`` long per split."""
    labels = {}
    for offset, split in enumerate(("train", "val")):
        found = _split_candidates(trainer, pl_module, split)
        with isolate_rng(include_cuda=False), seeded_rng(seed + offset):
            values = gather_inputs(found.dataset, indices[split], key)
        if values.is_floating_point() or values.ndim != 1:
            raise ValueError(
                f"Expected `label_key={key!r}` to pick one integer class label out of each "
                f"{'training' if split == 'train' else 'validation'} sample but got "
                f"{values.dtype} of shape {tuple(values.shape[1:])} per sample: pass the tuple "
                "index or dict key of the label"
            )
        labels[split] = values.long().cpu()
    return labels


def training_reference(
    monitor: Any, trainer: pl.Trainer, pl_module: pl.LightningModule, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The samples family's training reference, ``(indices, inputs)``: the indices kept in
    ``monitor.reference_index`` (after a resume), else up to ``reference_size`` training
    indices of samples distinct in content, drawn once with a generator of their own; their
    inputs read once (:func:`gather_reference`, through ``preprocess``). A training image
    repeated in the reference would be its own second nearest neighbour and hide a copy of it
    (``d_1 / d_2 = 1``), so repeats are left out
    (:func:`~lightning_memwatch.callbacks.machinery.drawing.draw_distinct`)."""
    preprocess = None
    if monitor.preprocess_name is not None:
        preprocess = monitor._attribute(pl_module, monitor.preprocess_name, "preprocess")

    def read(indices: Tensor) -> Tensor:
        return gather_reference(
            trainer, pl_module, indices, monitor.input_key, preprocess, monitor.seed
        ).to(dtype)

    if monitor.reference_index is not None:
        return monitor.reference_index, read(monitor.reference_index)
    found = _split_candidates(trainer, pl_module, "train")
    drawn = draw_distinct(found.indices, monitor.reference_size, monitor.seed + 2, read)
    if len(drawn.indices) < 2:
        raise ValueError(
            f"Expected DiffusionMonitor's training reference to hold at least 2 distinct samples "
            f"to find a generated sample's two nearest but the training loader yields "
            f"{len(drawn.indices)}: leave 'samples' out of `families`"
        )
    inputs = drawn.inputs if drawn.inputs is not None else read(drawn.indices)
    return drawn.indices, inputs


def gather_reference(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    indices: Tensor,
    input_key: Any,
    preprocess: Any,
    seed: int,
) -> Tensor:
    """The inputs of the reference ``indices`` (through ``preprocess`` as the probe's), on the
    CPU, read under the RNG seeded as the training probe is."""
    found = _split_candidates(trainer, pl_module, "train")
    include_cuda = pl_module.device.type == "cuda"
    with torch.no_grad(), isolate_rng(include_cuda=include_cuda), seeded_rng(seed):
        x = gather_inputs(
            found.dataset,
            indices,
            input_key,
            preprocess=preprocess,
            collate=found.loader.collate_fn,
            device=pl_module.device,
        )
    return x.detach().cpu()
