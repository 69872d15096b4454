"""Which samples a dataloader yields: the candidates a probe is drawn from (issue 14 item 2).

A probe must hold samples the model is trained on (train) or never sees (validation), so it is
drawn from the indices of ``loader.dataset`` that the loader's sampler yields in an epoch,
within the trainer's batch limit (``limit_train_batches``, ``limit_val_batches``,
``overfit_batches``, ``fast_dev_run``), not from the dataset as a whole:

- ``SequentialSampler`` (and any sampler of fixed order): the first ``num_batches *
  batch_size`` indices it yields, every epoch the same;
- ``RandomSampler``, ``SubsetRandomSampler``, ``WeightedRandomSampler``: every index it can
  yield (``range(len(data_source))``, ``indices``, the indices of positive weight). Within a
  batch limit each epoch yields another random subset of these, so over the epochs every one of
  them is trained on; :func:`loader_indices` says when that is the case;
- a ``DistributedSampler`` (Lightning's, under DDP): the union over the ranks, i.e. its
  dataset's (or, for ``DistributedSamplerWrapper``, the wrapped sampler's) indices, and a batch
  limit counts ``num_batches * batch_size`` per rank;
- any other sampler or batch sampler: iterated once, on a shallow copy whose generators are
  cloned, under an isolated RNG (torch, numpy, python) seeded with 0, so that every DDP rank
  and every resume sees the same; what it yields is taken as what it yields every epoch.

Indices are mapped through ``torch.utils.data.Subset`` wrappers to the dataset underneath, so
that a train and a validation loader over one dataset object can be checked for overlap.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from lightning_memwatch.callbacks.machinery.probes import (
    first_dataloader,
    map_style_dataset,
    seeded_rng,
)


def limited_batches(loader: DataLoader, limit: int | float) -> float:
    """Batches the trainer takes from ``loader`` per epoch under ``limit`` (an int: at most that
    many; a float: that share), as Lightning counts them; ``inf`` for a loader without length.
    A limit of ``0`` (no validation loop) takes the whole loader: the data is still there."""
    try:
        length: float = len(loader)
    except TypeError:
        length = math.inf
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit == 0:
        return length
    if isinstance(limit, int):
        return min(length, limit)
    return length if math.isinf(length) else int(length * limit)


def _copy_for_iteration(sampler: Any) -> Any:
    """A shallow copy of ``sampler`` whose ``torch.Generator`` (and numpy generator) attributes
    are clones, so that iterating it draws nothing from the original's generators."""
    clone = copy.copy(sampler)
    for name, value in list(getattr(sampler, "__dict__", {}).items()):
        if isinstance(value, torch.Generator):
            twin = torch.Generator(device=value.device)
            twin.set_state(value.get_state())
            setattr(clone, name, twin)
        elif type(value).__module__.startswith("numpy.random"):
            setattr(clone, name, copy.deepcopy(value))
    return clone


def _iterate(sampler: Any, count: float) -> list[Any]:
    """The first ``count`` items a copy of ``sampler`` yields, under an isolated RNG."""
    if math.isinf(count):
        if not isinstance(sampler, Sized):
            raise ValueError(
                f"Expected the dataloader's {type(sampler).__name__} to have a length, or the "
                "trainer to limit its batches, to tell which samples it yields: give the sampler "
                "a `__len__`, or pass `limit_train_batches` / `limit_val_batches`"
            )
        count = len(sampler)
    with isolate_rng(include_cuda=False), seeded_rng(0):  # the same on every rank and resume
        return list(itertools.islice(iter(_copy_for_iteration(sampler)), int(count)))


def sampler_order(sampler: Any, count: float) -> tuple[Tensor, bool]:
    """``(indices, shuffled)``: the indices ``sampler`` yields in an epoch, in order, or, when
    ``shuffled``, the set of indices it yields in random order or draws from."""
    if isinstance(sampler, DistributedSampler):
        inner = getattr(sampler.dataset, "_sampler", None)  # Lightning's DistributedSamplerWrapper
        if inner is not None:
            return sampler_order(inner, count)
        return torch.arange(len(sampler.dataset)), bool(sampler.shuffle)  # type: ignore[arg-type]
    if isinstance(sampler, SequentialSampler):
        return torch.arange(len(sampler.data_source)), False  # type: ignore[arg-type]
    if isinstance(sampler, RandomSampler):
        return torch.arange(len(sampler.data_source)), True  # type: ignore[arg-type]
    if isinstance(sampler, SubsetRandomSampler):
        return torch.as_tensor(list(sampler.indices), dtype=torch.long), True
    if isinstance(sampler, WeightedRandomSampler):
        return torch.nonzero(sampler.weights > 0).flatten(), True
    return torch.as_tensor([int(i) for i in _iterate(sampler, count)], dtype=torch.long), False


def loader_indices(loader: DataLoader, num_batches: float) -> tuple[Tensor, bool]:
    """``(indices, partial)``: the sorted distinct indices of ``loader.dataset`` the loader can
    yield within ``num_batches`` batches per epoch (union over DDP ranks); ``partial`` is True
    when a random sampler yields only a different random subset of them each epoch.

    Example::

        >>> import torch
        >>> from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset
        >>> data = TensorDataset(torch.zeros(10, 2))
        >>> loader_indices(DataLoader(data, batch_size=2), num_batches=2)
        (tensor([0, 1, 2, 3]), False)
        >>> loader_indices(DataLoader(data, sampler=SubsetRandomSampler([7, 3])), math.inf)
        (tensor([3, 7]), False)
    """
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and not isinstance(batch_sampler, BatchSampler):
        batches = _iterate(batch_sampler, num_batches)
        return torch.unique(torch.as_tensor([int(i) for b in batches for i in b])), False
    sampler = loader.sampler if batch_sampler is None else batch_sampler.sampler
    per_batch = 1 if batch_sampler is None else batch_sampler.batch_size
    replicas = sampler.num_replicas if isinstance(sampler, DistributedSampler) else 1
    count = num_batches * per_batch * replicas
    order, shuffled = sampler_order(sampler, count)
    if count >= len(order):
        return torch.unique(order), False
    if shuffled:
        return torch.unique(order), True
    return torch.unique(order[: int(count)]), False


def base_indices(dataset: Dataset, indices: Tensor) -> tuple[Dataset, Tensor]:
    """``(base, base_indices)``: ``dataset[i]`` is ``base[base_indices[i]]`` through nested
    ``Subset`` wrappers (``random_split`` makes them)."""
    while isinstance(dataset, Subset):
        indices = torch.as_tensor(list(dataset.indices), dtype=torch.long)[indices]
        dataset = dataset.dataset
    return dataset, indices


@dataclass
class Candidates:
    """What one split's loader yields: the loader, its dataset, the candidate indices of the
    dataset, and (for messages) how they were limited, ``""`` if they are the whole dataset."""

    loader: DataLoader
    dataset: Dataset
    indices: Tensor
    limit: str


def _limit_argument(trainer: pl.Trainer, split: str) -> str:
    if trainer.fast_dev_run:
        return f"fast_dev_run={trainer.fast_dev_run}"
    if trainer.overfit_batches:
        return f"overfit_batches={trainer.overfit_batches}"
    name = "limit_train_batches" if split == "train" else "limit_val_batches"
    return f"{name}={getattr(trainer, name)}"


def probe_candidates(trainer: pl.Trainer, loaders: Any, split: str) -> Candidates:
    """The indices a probe of ``split`` is drawn from: what the first of ``loaders`` yields per
    epoch within the trainer's batch limit (module docstring)."""
    what = "training" if split == "train" else "validation"
    loader = first_dataloader(loaders, split)
    dataset = map_style_dataset(loader, what)
    limit = trainer.limit_train_batches if split == "train" else trainer.limit_val_batches
    num_batches = limited_batches(loader, limit)
    indices, partial = loader_indices(loader, num_batches)
    described = ""
    if num_batches < limited_batches(loader, 1.0):
        described = f"{len(indices)} within `{_limit_argument(trainer, split)}`"
    elif len(indices) < len(dataset):
        sampler = type(getattr(loader, "sampler", None)).__name__
        described = f"{len(indices)} of the dataset's {len(dataset)}, as its {sampler} yields"
    if partial and split == "train":
        rank_zero_warn(
            f"The training dataloader shuffles and `{_limit_argument(trainer, split)}` takes a "
            f"different random part of its {len(indices)} samples each epoch: the training probe "
            "is drawn from all of them, so it holds samples not yet trained on in the first "
            "epochs. Use a sampler of fixed order, or a `Subset`, to train on a fixed set"
        )
    return Candidates(loader, dataset, indices, described)


def check_resumed(monitor: str, split: str, indices: Tensor, size: int, saved: int | None) -> None:
    """Fail when a probe loaded from a checkpoint indexes past the dataset (resumed on less
    data); warn when the dataset's size changed (the indices may name other samples)."""
    what = "training" if split == "train" else "validation"
    if len(indices) and int(indices.max()) >= size:
        drawn = "" if saved is None else f", drawn from {saved} samples"
        raise ValueError(
            f"Expected the {what} dataset to hold the probe that {monitor} resumed from the "
            f"checkpoint (up to index {int(indices.max())}{drawn}) but it has {size} samples: "
            "resume with the data the checkpoint was trained on, or pass another `seed` so that "
            "the monitor draws a new probe instead of loading the checkpoint's"
        )
    if saved is not None and saved != size:
        rank_zero_warn(
            f"{monitor} resumed a {what} probe drawn from {saved} samples but the {what} dataset "
            f"now has {size}: its indices may name other samples than before"
        )


def check_held_out(monitor: str, train: Candidates, val: Candidates, probe: Tensor) -> None:
    """Fail when the validation loader (or the validation ``probe``) yields samples the training
    loader yields too, from one dataset object (through ``Subset`` wrappers)."""
    train_base, train_indices = base_indices(train.dataset, train.indices)
    val_base, val_indices = base_indices(val.dataset, torch.cat([val.indices, probe]))
    if train_base is not val_base:
        return
    val_indices = torch.unique(val_indices)
    shared = int(torch.isin(val_indices, train_indices).sum())
    if shared:
        raise ValueError(
            f"Expected {monitor}'s validation probe to be held out but the validation dataloader "
            f"yields {shared} of its {len(val_indices)} samples from the training data too (both "
            f"read one {type(train_base).__name__} object): memorization would not show. Give "
            "validation samples of its own: another dataset, a `random_split` / `Subset`, or "
            "disjoint `SubsetRandomSampler` indices"
        )
