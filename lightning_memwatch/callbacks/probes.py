"""Fixed probe samples drawn from the datasets behind the trainer's dataloaders (DESIGN §3),
and the latents an encoder gives them.

A probe is ``probe_size`` samples drawn once, with a seeded generator of its own, from the
training and the validation dataset; the indices are saved in the callback's ``state_dict`` so a
resumed run watches the same points. Under DDP every rank draws the same indices and measures its
own shard ``indices[rank::world_size]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

InputKey = int | str | None


def first_dataloader(loaders: Any, split: str) -> DataLoader:
    """The dataloader itself, or the first of a list/dict of them (``trainer.val_dataloaders``).

    ``split`` is ``"train"`` or ``"val"``, as in ``trainer.fit(train_dataloaders=...,
    val_dataloaders=...)``.
    """
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, Sequence):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        what = "training" if split == "train" else "validation"
        raise ValueError(
            f"Expected {what} data to draw a probe from but the trainer has none: pass "
            f"`{split}_dataloaders` to `trainer.fit` or define `{split}_dataloader()`"
        )
    return loaders


def map_style_dataset(loader: DataLoader, what: str) -> Dataset:
    """The dataset behind ``loader``; it must be map-style (``__len__`` and ``__getitem__``)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            f"Expected the {what} dataloader to wrap a map-style dataset (with `__len__` and "
            f"`__getitem__`) but got {type(dataset).__name__}: memwatch draws a fixed probe by "
            "index; wrap an iterable dataset's samples in a `TensorDataset` for the probe"
        )
    return dataset


def draw_indices(dataset_size: int, probe_size: int, seed: int, what: str) -> Tensor:
    """``probe_size`` distinct indices of ``range(dataset_size)``, drawn with a generator
    seeded by ``seed``."""
    if probe_size > dataset_size:
        raise ValueError(
            f"Expected `probe_size` to be at most the {what} dataset's size ({dataset_size}) but "
            f"got {probe_size}: pass a smaller `probe_size`"
        )
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(dataset_size, generator=generator)[:probe_size]


def select_input(sample: Any, input_key: InputKey) -> Tensor:
    """The model input inside one dataset sample (tuple index, dict key, or the sample itself)."""
    if input_key is None:
        value = sample
    else:
        try:
            value = sample[input_key]
        except (KeyError, IndexError, TypeError) as error:
            kind = type(sample).__name__
            raise ValueError(
                f"Expected `input_key={input_key!r}` to pick the input out of a {kind} sample but "
                f"it failed ({error}): pass the tuple index or dict key of the input, or None "
                "when the sample is the input"
            ) from None
    if not isinstance(value, Tensor):
        raise ValueError(
            f"Expected `input_key={input_key!r}` to pick a tensor out of each sample but got "
            f"{type(value).__name__}: pass the tuple index or dict key of the input"
        )
    return value


def gather_inputs(dataset: Dataset, indices: Tensor, input_key: InputKey) -> Tensor:
    """Stack the inputs of ``dataset[i]`` for each index: ``(P, ...)``."""
    return torch.stack([select_input(dataset[int(i)], input_key) for i in indices])


def shard(values: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's share of a probe: every ``world_size``-th row from ``rank``."""
    return values[rank::world_size]


def train_loader(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """The training dataloader; outside ``fit`` (``trainer.validate``) the datamodule's or the
    module's ``train_dataloader()``, so a validate-only run can draw its probe too."""
    if trainer.train_dataloader is not None:
        return trainer.train_dataloader
    for source in (trainer.datamodule, pl_module):
        if source is not None and is_overridden("train_dataloader", source):
            return source.train_dataloader()
    return None


def latents_of(output: Any) -> Tensor:
    """The latent batch in an encoder's output: a tensor, a tuple's first element, a
    distribution's mean (DESIGN §3)."""
    if isinstance(output, torch.distributions.Distribution) or (
        not isinstance(output, Tensor) and isinstance(getattr(output, "mean", None), Tensor)
    ):
        output = output.mean
    elif isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, Tensor) or output.ndim != 2:
        raise ValueError(
            "Expected the encoder to return a (B, m) latent batch, a tuple whose first element is "
            f"one, or a distribution with such a mean, but got {type(output).__name__}"
        )
    return output
