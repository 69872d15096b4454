"""Small and duplicated training data at the monitors' defaults, in real fits: a probe larger
than what the loaders yield takes what there is with one warning, a training set that repeats
its samples gets a probe of distinct samples (and the decay radii of its distinct samples), a
validation sample equal to a training sample is reported, and the draw is seeded, read once
where nothing repeats, and kept over a resume."""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split

from lightning_memwatch.callbacks import GeometryMonitor, RecoveryMonitor, SampleMonitor
from lightning_memwatch.callbacks.machinery.drawing import MIN_CHUNK, draw_distinct
from tests.conftest import digits_tensors, make_autoencoder, numpy_distinct_radii, quiet_trainer


def fit(callbacks, train, val, max_epochs=1, **kwargs):
    """Fit the tiny autoencoder, recording every warning; returns (trainer, warning texts)."""
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=max_epochs, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(make_autoencoder(), train, val)
    return trainer, [str(w.message) for w in caught]


def loaders(train: torch.Tensor, val: torch.Tensor, batch_size: int = 32):
    return (
        DataLoader(TensorDataset(train), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(val), batch_size=batch_size),
    )


def about(messages: list[str], monitor: str, words: str) -> list[str]:
    return [m for m in messages if m.startswith(f"{monitor}:") and words in m]


def distinct_rows(x: torch.Tensor) -> int:
    return len(np.unique(x.reshape(len(x), -1).numpy(), axis=0))


def finite_values(trainer) -> dict[str, float]:
    """The logged memwatch train / val statistics (not costs) that are finite."""
    values = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("memwatch/")}
    return {k: v for k, v in values.items() if k.endswith(("/train", "/val", "/ct"))}


MONITORS = {
    "GeometryMonitor": GeometryMonitor,
    "RecoveryMonitor": RecoveryMonitor,
    "SampleMonitor": SampleMonitor,
}


# ------------------------------------------------------------ fewer samples than the probe
@pytest.mark.parametrize("name", sorted(MONITORS))
def test_32_training_samples_at_the_default_probe_of_64_run_with_one_warning(name):
    """32 training and 48 validation digits, each monitor at its default probe of 64 (the budget
    off, so that the one epoch is measured): no error,
    one warning that says how many and which `probe_size=` silences it, measured values finite.
    The geometry and recovery probes hold 32 a split (all the training digits); SampleMonitor's
    held-out probe 48 (its training side is the reference, all 32 digits)."""
    train, val = digits_tensors(32, 48)
    cb = MONITORS[name](max_overhead=math.inf)
    trainer, messages = fit([cb], *loaders(train, val))
    expected = 48 if name == "SampleMonitor" else 32
    warned = about(messages, name, "`probe_size=64`")
    assert len(warned) == 1, messages
    split = "validation" if name == "SampleMonitor" else "training"
    assert f"the {split} dataloader yields {expected} samples" in warned[0]
    assert f"holds {expected} samples per split. Pass `probe_size={expected}`" in warned[0]
    assert cb.probe_size == 64 and cb.effective_probe_size == expected
    assert len(cb.indices["val"]) == expected and len(cb.inputs["val"]) == expected
    assert sorted(cb.indices["train"].tolist()) == list(range(32))  # every training digit
    assert cb.state_dict()["effective_probe_size"] == expected
    values = finite_values(trainer)
    assert values and all(math.isfinite(v) for v in values.values()), values
    assert trainer.callback_metrics[f"memwatch/{cb.families[0]}/probe_size"] == expected


def test_the_probe_size_warning_is_given_once_per_fit_and_not_again_on_resume(tmp_path):
    train, val = digits_tensors(32, 48)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    first = GeometryMonitor(encoder="encode", families=("spectrum",), max_overhead=math.inf)
    _, messages = fit([first, ckpt], *loaders(train, val), max_epochs=2, enable_checkpointing=True)
    assert len(about(messages, "GeometryMonitor", "`probe_size=64`")) == 1
    resumed = GeometryMonitor(encoder="encode", families=("spectrum",), max_overhead=math.inf)
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=[resumed], max_epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(
            make_autoencoder(),
            *loaders(train, val),
            ckpt_path=str(tmp_path / "epoch=1-step=2.ckpt"),
        )
    assert not about([str(w.message) for w in caught], "GeometryMonitor", "`probe_size=64`")
    assert resumed.effective_probe_size == first.effective_probe_size == 32
    for split in ("train", "val"):
        assert torch.equal(resumed.indices[split], first.indices[split])
        assert torch.equal(resumed.inputs[split], first.inputs[split])


# ------------------------------------------------------------------- duplicated data
def repeated(times: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(32 distinct digits, those repeated ``times`` times and shuffled, 64 other digits)."""
    distinct, val = digits_tensors(32, 64)
    order = torch.from_numpy(np.random.default_rng(0).permutation(32 * times))
    return distinct, distinct.repeat(times, 1, 1, 1)[order], val


@pytest.mark.parametrize("name", sorted(MONITORS))
def test_a_training_set_repeated_16_times_gets_a_probe_of_its_distinct_samples(name):
    """The issue's case: 32 digits repeated 16 times (512 samples) at the monitors' defaults.
    Before: GeometryMonitor failed ("most samples have a duplicate"). The fit runs (the budget
    off, so that the one epoch is measured), the
    training probe (SampleMonitor: its reference) holds the 32 distinct digits once each, the
    message says 32, and the decay radii are the distinct digits' (numpy)."""
    distinct, train, val = repeated()
    cb = MONITORS[name](max_overhead=math.inf)
    trainer, messages = fit([cb], *loaders(train, val))
    probe = cb.inputs["train"]
    assert len(probe) == distinct_rows(probe) == 32
    assert distinct_rows(torch.cat([probe, distinct])) == 32  # the same 32 digits
    argument = "reference_size=1024" if name == "SampleMonitor" else "probe_size=64"
    warned = about(messages, name, f"`{argument}`")
    assert len(warned) == 1, messages
    assert "yields 512 samples, which hold only 32 distinct inputs" in warned[0]
    assert f"Pass `{argument.split('=')[0]}=32`" in warned[0]
    if name == "SampleMonitor":  # the held-out probe is not cut to the reference
        assert cb.effective_probe_size == len(cb.inputs["val"]) == 64
    else:
        assert cb.effective_probe_size == len(cb.inputs["val"]) == 32
    if name == "GeometryMonitor":
        np.testing.assert_allclose(cb.radii, numpy_distinct_radii(distinct.numpy()), rtol=1e-12)
        np.testing.assert_allclose(cb.radii, numpy_distinct_radii(train.numpy()), rtol=1e-12)
    values = finite_values(trainer)
    assert values and all(math.isfinite(v) for v in values.values()), values


def test_a_few_repeats_are_replaced_and_the_probe_stays_full(caplog):
    """100 digits of which 20 appear twice: the probe of 64 holds 64 distinct digits, the
    repeats of the first draw replaced by the next candidates of the seeded permutation."""
    train, val = digits_tensors(100, 64)
    data = torch.cat([train, train[:20]])
    cb = GeometryMonitor(
        encoder="encode", probe_size=64, families=("spectrum",), max_overhead=math.inf
    )
    with caplog.at_level("INFO"):
        _, messages = fit([cb], *loaders(data, val))
    assert not about(messages, "GeometryMonitor", "`probe_size")
    assert len(cb.indices["train"]) == distinct_rows(cb.inputs["train"]) == 64
    assert cb.effective_probe_size == 64
    assert "repeat another exactly; the probe holds 64 distinct ones" in caplog.text
    # the same indices as a walk through the same permutation, keeping first occurrences
    order = torch.randperm(120, generator=torch.Generator().manual_seed(cb.seed))
    content = [bytes(data[i].numpy().tobytes()) for i in range(120)]
    seen, want = set(), []
    for i in order.tolist():
        if content[i] not in seen and len(want) < 64:
            want.append(i)
        seen.add(content[i])
    assert cb.indices["train"].tolist() == want


def test_fewer_than_two_distinct_training_samples_fail_naming_the_count():
    _, _, val = repeated()
    one = digits_tensors(1, 0)[0].repeat(40, 1, 1, 1)
    cb = GeometryMonitor()
    match = r"at least 2 distinct training samples for GeometryMonitor's probe.*only 1 distinct"
    with pytest.raises(ValueError, match=match):
        fit([cb], *loaders(one, val))


def test_a_validation_sample_equal_to_a_training_sample_is_reported():
    """A random_split of a repeated dataset: held out by index (no error), not by content. Every
    training digit is read while drawing the probe (fewer distinct than 64), so the count is
    exact: the validation probe's digits that equal any training sample (numpy)."""
    distinct, _, val = repeated()
    data = TensorDataset(torch.cat([distinct[:20].repeat(8, 1, 1, 1), val[:40]]))
    train_set, val_set = random_split(data, [120, 80], generator=torch.Generator().manual_seed(0))
    cb = GeometryMonitor(encoder="encode", families=("spectrum",), max_overhead=math.inf)
    _, messages = fit(
        [cb], DataLoader(train_set, batch_size=32), DataLoader(val_set, batch_size=32)
    )
    training = {data[i][0].numpy().tobytes() for i in train_set.indices}
    shared = sum(x.numpy().tobytes() in training for x in cb.inputs["val"])
    assert 0 < shared < len(cb.inputs["val"])
    warned = about(messages, "GeometryMonitor", "equal a training sample in content")
    assert len(warned) == 1
    assert f"{shared} of the validation probe's {len(cb.inputs['val'])} samples" in warned[0]


# ------------------------------------------------------------------ how the draw reads
class Counting(Dataset):
    """Counts the reads of each sample."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.reads = x, torch.zeros(len(x), dtype=torch.long)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads[i] += 1
        return (self.x[i],)


class Snapshot(L.Callback):
    """The reads of each dataset when training starts (after the monitors drew their probes,
    before the loaders read a batch)."""

    def __init__(self, datasets: dict[str, Counting]) -> None:
        self.datasets, self.reads = datasets, {}

    def on_train_start(self, trainer, pl_module):
        self.reads = {split: d.reads.clone() for split, d in self.datasets.items()}


def test_without_repeats_each_probe_sample_is_read_once_and_nothing_else():
    """The draw reads the first `probe_size` candidates of the permutation, and the probe inputs
    are those reads: no sample is read twice, no other sample is read."""
    train, val = digits_tensors(300, 200)
    datasets = {"train": Counting(train), "val": Counting(val)}
    cb = GeometryMonitor(
        encoder="encode", probe_size=24, families=("spectrum",), max_overhead=math.inf
    )
    snapshot = Snapshot(datasets)
    loaders_ = [DataLoader(d, batch_size=32) for d in datasets.values()]
    fit([cb, snapshot], *loaders_, num_sanity_val_steps=0)
    for split in ("train", "val"):
        want = torch.zeros(len(datasets[split]), dtype=torch.long)
        want[cb.indices[split]] = 1
        assert torch.equal(snapshot.reads[split], want), split


def test_draw_distinct_reads_only_replacements_for_repeats():
    """Against a walk through the seeded permutation written here; the samples read are the
    first `probe_size` candidates and, for the repeats among them, chunks of the next ones."""
    rng = np.random.default_rng(4)
    data = torch.from_numpy(rng.integers(0, 40, size=(400, 1)).astype(np.float32))  # 40 values
    reads: list[int] = []

    def read(indices):
        reads.extend(indices.tolist())
        return data[indices]

    drawn = draw_distinct(torch.arange(400), 30, seed=5, read=read)
    order = torch.randperm(400, generator=torch.Generator().manual_seed(5)).tolist()
    seen, want = set(), []
    for i in order:
        if float(data[i]) not in seen and len(want) < 30:
            want.append(i)
        seen.add(float(data[i]))
        if len(want) == 30:
            break
    assert drawn.indices.tolist() == want
    assert reads == order[: len(reads)]  # in the permutation's order, each once
    last = order.index(want[-1])  # the last sample kept: read up to a chunk past it
    assert last < len(reads) < last + max(30, MIN_CHUNK) < 400
    assert drawn.repeats == len(reads) - len({float(data[i]) for i in reads})
    again = draw_distinct(torch.arange(400), 30, seed=5, read=lambda i: data[i])
    assert torch.equal(again.indices, drawn.indices)  # seeded: every rank draws the same
