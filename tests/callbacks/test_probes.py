"""Probes drawn from what each loader yields, read under a seeded isolated RNG (issue 14 items
2, 6, 9): samplers, batch limits, shared datasets, augmenting datasets, resumes."""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
    random_split,
)

from lightning_memwatch.callbacks import GeometryMonitor
from lightning_memwatch.callbacks.machinery.samplers import (
    base_indices,
    limited_batches,
    loader_indices,
)
from tests.conftest import digits_tensors, make_autoencoder, quiet_trainer


def monitor(**kwargs) -> GeometryMonitor:
    options = {"encoder": "encode", "probe_size": 16, "families": ("spectrum",)}
    options.update(kwargs)
    return GeometryMonitor(max_overhead=math.inf, **options)


def fit(callbacks, train, val, model=None, max_epochs=1, **trainer_kwargs):
    L.seed_everything(0, verbose=False)
    model = model or make_autoencoder()
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=max_epochs, **trainer_kwargs)
    trainer.fit(model, train, val)
    return trainer, model


def as_set(indices) -> set[int]:
    return {int(i) for i in indices}


# ------------------------------------------------------------------- which indices
def test_a_sampler_split_of_one_dataset_gives_disjoint_probes_inside_each_split():
    """Before: 12 of 16 validation probe samples were training samples, and 7 of 16 training
    probe samples were never trained on."""
    images = torch.cat(digits_tensors())
    data = TensorDataset(images)
    order = np.random.default_rng(3).permutation(len(data))
    train_ids, val_ids = order[:96].tolist(), order[96:].tolist()
    train = DataLoader(data, batch_size=32, sampler=SubsetRandomSampler(train_ids))
    val = DataLoader(data, batch_size=32, sampler=SubsetRandomSampler(val_ids))
    cb = monitor()
    fit([cb], train, val)
    assert as_set(cb.indices["train"]) <= set(train_ids)
    assert as_set(cb.indices["val"]) <= set(val_ids)
    assert torch.equal(cb.inputs["val"], images[cb.indices["val"]])


@pytest.mark.parametrize(
    ("trainer_kwargs", "shuffle", "train_allowed", "val_allowed"),
    [
        ({"limit_train_batches": 2}, False, 32, 64),
        ({"limit_train_batches": 0.5, "limit_val_batches": 1}, False, 32, 16),
        ({"overfit_batches": 2}, True, 32, 32),
        ({"fast_dev_run": 2}, False, 32, 32),
    ],
)
def test_batch_limits_bound_the_probes(trainer_kwargs, shuffle, train_allowed, val_allowed):
    """Loaders of 16 per batch: a limit of ``k`` batches of a sequential loader yields its first
    ``16 k`` indices (``overfit_batches`` turns shuffling off and limits both loops)."""
    train_images, val_images = digits_tensors(64, 64)
    train = DataLoader(TensorDataset(train_images), batch_size=16, shuffle=shuffle)
    val = DataLoader(TensorDataset(val_images), batch_size=16)
    cb = monitor(probe_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning: "turning off the train shuffling"
        fit([cb], train, val, **trainer_kwargs)
    assert max(as_set(cb.indices["train"])) < train_allowed
    assert max(as_set(cb.indices["val"])) < val_allowed
    assert len(as_set(cb.indices["train"])) == 16


def test_a_probe_larger_than_what_the_limit_yields_takes_what_there_is_naming_the_limit():
    train_images, val_images = digits_tensors(64, 64)
    train = DataLoader(TensorDataset(train_images), batch_size=16)
    val = DataLoader(TensorDataset(val_images), batch_size=16)
    cb = monitor(probe_size=32)
    with pytest.warns(UserWarning, match=r"yields 16 within `limit_train_batches=1`.*holds 16"):
        fit([cb], train, val, limit_train_batches=1)
    assert as_set(cb.indices["train"]) == set(range(16)) and len(cb.indices["val"]) == 16


def test_a_shuffled_loader_under_a_limit_warns_that_each_epoch_trains_on_another_part():
    train_images, val_images = digits_tensors(64, 64)
    train = DataLoader(TensorDataset(train_images), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(val_images), batch_size=16)
    with pytest.warns(UserWarning, match=r"different random part of its 64 samples each epoch"):
        fit([monitor()], train, val, limit_train_batches=2)


def test_loader_indices_of_the_usual_samplers():
    """Against the indices written out by hand for each sampler."""
    data = TensorDataset(torch.zeros(20, 2))

    def indices(loader, batches=math.inf):
        got, partial = loader_indices(loader, batches)
        return got.tolist(), partial

    assert indices(DataLoader(data, batch_size=4), 2) == (list(range(8)), False)
    assert indices(DataLoader(data, batch_size=4, shuffle=True), 2) == (list(range(20)), True)
    assert indices(DataLoader(data, batch_size=4, shuffle=True)) == (list(range(20)), False)
    sub = SubsetRandomSampler([9, 2, 5])
    assert indices(DataLoader(data, sampler=sub, batch_size=2)) == ([2, 5, 9], False)
    weights = torch.tensor([0.0, 1.0, 0.0, 2.0] + [0.0] * 16)
    weighted = WeightedRandomSampler(weights, num_samples=20)
    assert indices(DataLoader(data, sampler=weighted)) == ([1, 3], False)
    assert indices(DataLoader(data, batch_size=None), 3) == ([0, 1, 2], False)
    # Lightning's DDP samplers: the union over the ranks, a batch limit counted per rank
    ddp = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
    assert indices(DataLoader(data, batch_size=3, sampler=ddp), 2) == (list(range(12)), False)
    wrapped = DistributedSamplerWrapper(SubsetRandomSampler([4, 8, 15]), num_replicas=2, rank=0)
    assert indices(DataLoader(data, sampler=wrapped)) == ([4, 8, 15], False)


class FixedOrder(Sampler):
    """A custom sampler of fixed order that owns a generator (it draws nothing from it)."""

    def __init__(self, order, generator):
        self.order, self.generator = order, generator

    def __iter__(self):
        torch.rand(1, generator=self.generator)  # a draw a copy must not take from the original
        torch.rand(1)
        yield from self.order

    def __len__(self):
        return len(self.order)


def test_a_custom_sampler_is_iterated_on_a_copy_under_an_isolated_rng():
    generator = torch.Generator().manual_seed(5)
    before, global_before = generator.get_state(), torch.get_rng_state()
    loader = DataLoader(
        TensorDataset(torch.zeros(20, 2)),
        sampler=FixedOrder([7, 3, 11, 1], generator),
        batch_size=2,
    )
    got, partial = loader_indices(loader, 1)
    assert got.tolist() == [3, 7] and not partial
    assert torch.equal(generator.get_state(), before)
    assert torch.equal(torch.get_rng_state(), global_before)


class RandomPick(Sampler):
    """A custom random sampler drawing from the global RNG."""

    def __iter__(self):
        yield from torch.randperm(20)[:5].tolist()

    def __len__(self):
        return 5


def test_a_custom_random_sampler_gives_the_same_candidates_whatever_the_global_rng():
    """Every DDP rank and every resume must draw the same probe."""
    loader = DataLoader(TensorDataset(torch.zeros(20, 2)), sampler=RandomPick())
    torch.manual_seed(1)
    first, _ = loader_indices(loader, math.inf)
    torch.manual_seed(2)
    second, _ = loader_indices(loader, math.inf)
    assert torch.equal(first, second) and len(first) == 5


def test_limited_batches_counts_as_lightning_does():
    loader = DataLoader(TensorDataset(torch.zeros(10, 1)), batch_size=3)  # 4 batches
    assert [limited_batches(loader, limit) for limit in (1.0, 0.5, 2, 9, 0)] == [4, 2, 2, 4, 4]


def test_base_indices_follow_nested_subsets():
    data = TensorDataset(torch.arange(10.0))
    outer = torch.utils.data.Subset(torch.utils.data.Subset(data, [9, 8, 7, 6]), [3, 0])
    base, indices = base_indices(outer, torch.tensor([1, 0]))
    assert base is data and indices.tolist() == [9, 6]


# ------------------------------------------------------------------- held-out checks
class SameData(L.LightningDataModule):
    """A datamodule that passes the same dataset object for training and validation."""

    def __init__(self, split: bool) -> None:
        super().__init__()
        self.data = TensorDataset(torch.cat(digits_tensors()))
        self.split = split

    def setup(self, stage):
        generator = torch.Generator().manual_seed(0)
        self.train_set, self.val_set = (
            random_split(self.data, [96, 64], generator=generator)
            if self.split
            else (self.data, self.data)
        )

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=32)


def test_the_same_dataset_for_training_and_validation_fails_before_training():
    model = make_autoencoder()
    trainer = quiet_trainer(callbacks=[monitor()], max_epochs=1)
    with pytest.raises(ValueError, match=r"validation probe to be held out.*yields 160 of its 160"):
        trainer.fit(model, datamodule=SameData(split=False))
    assert model.losses == []


def test_a_random_split_of_one_dataset_is_held_out():
    cb = monitor()
    dm = SameData(split=True)
    L.seed_everything(0, verbose=False)
    quiet_trainer(callbacks=[cb], max_epochs=1).fit(make_autoencoder(), datamodule=dm)
    _, train = base_indices(dm.train_set, cb.indices["train"])
    _, val = base_indices(dm.val_set, cb.indices["val"])
    assert as_set(train) <= set(dm.train_set.indices)
    assert as_set(val) <= set(dm.val_set.indices) and not as_set(val) & set(dm.train_set.indices)


def test_overlapping_samplers_over_one_dataset_fail():
    data = TensorDataset(torch.cat(digits_tensors()))
    train = DataLoader(data, batch_size=32, sampler=SubsetRandomSampler(range(0, 100)))
    val = DataLoader(data, batch_size=32, sampler=SubsetRandomSampler(range(90, 160)))
    with pytest.raises(ValueError, match=r"yields 10 of its 70 samples from the training data"):
        fit([monitor()], train, val)


# ------------------------------------------------------------------- augmentations
class Augmenting(Dataset):
    """Digits with noise from the global torch and numpy RNGs in ``__getitem__``."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        noise = 0.05 * torch.randn(self.images[i].shape) + float(np.random.uniform(0, 0.05))  # noqa: NPY002
        return ((self.images[i] + noise).clamp(0, 1),)


def augmenting_loaders(num_workers: int = 0):
    train, val = digits_tensors()
    options = {"batch_size": 32, "num_workers": num_workers}
    if num_workers:
        options["persistent_workers"] = False
    return (
        DataLoader(Augmenting(train), shuffle=True, **options),
        DataLoader(Augmenting(val), **options),
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_on_an_augmenting_dataset_is_bit_identical_with_and_without_a_monitor(
    num_workers,
):
    """Before: the probe gather drew from the global RNGs and training differed from step 0."""
    _, plain = fit([], *augmenting_loaders(num_workers), max_epochs=2)
    cb = monitor(probe_size=8)
    _, watched = fit([cb], *augmenting_loaders(num_workers), max_epochs=2)
    assert plain.losses == watched.losses
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_an_augmenting_dataset_gives_the_same_probe_inputs_at_every_gather():
    """Two fits, and the gather of the probe by hand under the documented seeding."""
    first, second = monitor(probe_size=8), monitor(probe_size=8)
    fit([first], *augmenting_loaders())
    fit([second], *augmenting_loaders())
    for split in ("train", "val"):
        assert torch.equal(first.inputs[split], second.inputs[split])
    train, _ = augmenting_loaders()
    torch.manual_seed(first.seed)
    np.random.seed(first.seed)  # noqa: NPY002 (what the monitor seeds)
    expected = torch.stack([train.dataset[int(i)][0] for i in first.indices["train"]])
    assert torch.equal(first.inputs["train"], expected)


def test_resume_gathers_the_same_inputs_from_an_augmenting_dataset(tmp_path):
    """Before: two gathers of one probe differed by up to 0.227."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    whole = monitor(probe_size=8)
    fit([whole, ckpt], *augmenting_loaders(), max_epochs=2, enable_checkpointing=True)
    resumed = monitor(probe_size=8)
    trainer = quiet_trainer(callbacks=[resumed], max_epochs=2)
    trainer.fit(
        make_autoencoder(), *augmenting_loaders(), ckpt_path=str(tmp_path / "epoch=0-step=3.ckpt")
    )
    for split in ("train", "val"):
        assert torch.equal(whole.indices[split], resumed.indices[split])
        assert torch.equal(whole.inputs[split], resumed.inputs[split])


def test_resume_on_a_smaller_dataset_fails_naming_the_checkpoint(tmp_path):
    """Before: ``IndexError: index 44 is out of bounds``."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    train, val = digits_tensors(96, 64)
    loaders = (DataLoader(TensorDataset(train), 32), DataLoader(TensorDataset(val), 32))
    fit([monitor(), ckpt], *loaders, enable_checkpointing=True)
    small = (DataLoader(TensorDataset(train[:20]), 10), loaders[1])
    trainer = quiet_trainer(callbacks=[monitor()], max_epochs=2)
    with pytest.raises(ValueError, match=r"drawn from 96 samples\) but it has 20 samples.*`seed`"):
        trainer.fit(make_autoencoder(), *small, ckpt_path=str(tmp_path / "epoch=0-step=3.ckpt"))
