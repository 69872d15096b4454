"""Fixed probe samples drawn from what the trainer's dataloaders yield.

A probe is ``probe_size`` samples drawn once, with a seeded generator of its own, from the
indices the training and the validation loader yield within the trainer's batch limits
(:mod:`~lightning_memwatch.callbacks.machinery.samplers`), distinct in content and as many as
the loaders allow (:mod:`~lightning_memwatch.callbacks.machinery.drawing`); the indices are
saved in the callback's ``state_dict`` so a resumed run watches the same points. The samples are
read under an isolated RNG seeded by the monitor's seed, so that a dataset that augments in
``__getitem__`` gives the same probe inputs at every gather (before and after a resume) and
training draws what it would draw without a monitor. Under DDP every rank draws the same indices
and measures its own shard ``indices[rank::world_size]``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

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


def draw_indices(dataset_size: int | Tensor, probe_size: int, seed: int) -> Tensor:
    """Up to ``probe_size`` distinct indices drawn, with a generator seeded by ``seed``, from
    ``range(dataset_size)`` or from the candidate indices ``dataset_size`` (a tensor): the first
    ``probe_size`` of a seeded permutation, all of them when there are fewer.

    Example::

        >>> draw_indices(torch.tensor([7, 3, 5]), 8, seed=0).sort().values
        tensor([3, 5, 7])
    """
    candidates = (
        torch.arange(dataset_size) if isinstance(dataset_size, int) else dataset_size.flatten()
    )
    generator = torch.Generator().manual_seed(seed)
    return candidates[torch.randperm(len(candidates), generator=generator)[:probe_size]]


def select_input(sample: Any, input_key: InputKey) -> Tensor:
    """The model input inside one dataset sample (tuple index, dict key, or the sample itself);
    numpy arrays become tensors (``torch.as_tensor``)."""
    if isinstance(sample, np.ndarray):
        sample = torch.as_tensor(sample)
    if isinstance(sample, Tensor) and isinstance(input_key, int):
        raise ValueError(
            f"Expected `input_key={input_key!r}` to pick the input out of a tuple or dict sample "
            f"but the dataset's samples are tensors ({tuple(sample.shape)}): it would take row "
            f"{input_key} of each. Pass `input_key=None` (the sample is the input)"
        )
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
    if isinstance(value, np.ndarray):
        value = torch.as_tensor(value)
    if not isinstance(value, Tensor):
        raise ValueError(
            f"Expected `input_key={input_key!r}` to pick a tensor (or numpy array) out of each "
            f"sample but got {type(value).__name__}: pass the tuple index or dict key of the "
            "input, or `preprocess=` a module method that turns a batch into the input"
        )
    return value


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed the global CPU torch, numpy and python RNGs with ``seed`` for the block; the caller
    isolates them (``isolate_rng`` / the measurement context) so training never sees it."""
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global RNG is what datasets use)
    random.seed(seed)
    yield


def gather_inputs(
    dataset: Dataset,
    indices: Tensor,
    input_key: InputKey,
    *,
    preprocess: Callable[[Any], Any] | None = None,
    collate: Callable[[list[Any]], Any] | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """The probe inputs ``(P, ...)`` of ``dataset[i]`` for each index.

    Without ``preprocess``: ``input_key`` picks the input of each sample and they are stacked.
    With it: the samples are collated (``collate``, the loader's ``collate_fn``; default
    ``default_collate``) into a batch as ``training_step`` receives it, moved to ``device``, and
    ``preprocess(batch)`` gives the inputs (``input_key`` picks them out of its result unless
    that is a tensor).

    Example::

        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.arange(6.0).reshape(3, 2), torch.zeros(3))
        >>> gather_inputs(data, torch.tensor([2, 0]), 0)
        tensor([[4., 5.],
                [0., 1.]])
        >>> gather_inputs(data, torch.tensor([2]), 0, preprocess=lambda batch: batch[0].sum(1))
        tensor([9.])
    """
    samples = [dataset[int(i)] for i in indices]
    if preprocess is None:
        return torch.stack([select_input(sample, input_key) for sample in samples])
    batch = (collate or default_collate)(samples)
    if device is not None:
        batch = move_data_to_device(batch, device)
    try:
        output = preprocess(batch)
    except Exception as error:
        raise ValueError(
            f"Expected `preprocess` to turn a batch of probe samples ({_batch_kind(batch)}, as the "
            f"loader collates them for `training_step`) into the model's inputs but it raised "
            f"{type(error).__name__}: {error}: name a module method that takes such a batch"
        ) from error
    return output if isinstance(output, Tensor) else select_input(output, input_key)


def _batch_kind(batch: Any) -> str:
    if isinstance(batch, Tensor):
        return f"a tensor {tuple(batch.shape)}"
    if isinstance(batch, (tuple, list)):
        parts = ", ".join(
            str(tuple(b.shape)) if isinstance(b, Tensor) else type(b).__name__ for b in batch
        )
        return f"a {type(batch).__name__} of {parts}"
    if isinstance(batch, Mapping):
        return f"a {type(batch).__name__} with keys {', '.join(map(str, batch))}"
    return type(batch).__name__


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


def _val_source(trainer: pl.Trainer) -> Any:
    """Lightning's record of where ``fit``'s validation data comes from (loaders passed to
    ``fit``, the datamodule or the module), or ``None``."""
    source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
    if source is None or getattr(source, "instance", None) is None:
        return None
    return source if source.is_defined() else None


def has_held_out_data(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """Whether :func:`val_loader` can find validation data (without loading it)."""
    if trainer.val_dataloaders is not None or _val_source(trainer) is not None:
        return True
    owners = (trainer.datamodule, pl_module)
    return any(o is not None and is_overridden("val_dataloader", o) for o in owners)


def val_loader(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """The validation dataloader(s): the trainer's, else (before Lightning loads them: no
    ``validation_step``, ``limit_val_batches=0``, validation in a later epoch) the ones passed
    to ``fit``, or the datamodule's or the module's ``val_dataloader()``; ``None`` if none."""
    if trainer.val_dataloaders is not None:
        return trainer.val_dataloaders
    source = _val_source(trainer)
    if source is not None:
        return source.dataloader()
    for owner in (trainer.datamodule, pl_module):
        if owner is not None and is_overridden("val_dataloader", owner):
            return owner.val_dataloader()
    return None
