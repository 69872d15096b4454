"""When the monitors measure, what Lightning's own callbacks then see, and the rolling probe."""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from scipy import stats

from lightning_memwatch.callbacks import GeometryMonitor, RecoveryMonitor
from lightning_memwatch.callbacks.machinery.readers import silence_sync_dist_advice
from lightning_memwatch.callbacks.machinery.rolling import RollingTable, roll
from lightning_memwatch.metrics.train_val import TrainValGap
from tests.conftest import digits_loaders, make_autoencoder, quiet_trainer

KEY = "memwatch/spectrum/log_volume/train"


def monitor(**kwargs) -> GeometryMonitor:
    options = {
        "encoder": "encode",
        "probe_size": 12,
        "max_overhead": math.inf,
        "radii": (0.1, 0.2),
        "families": ("spectrum",),
    }
    options.update(kwargs)
    return GeometryMonitor(**options)


def fit(callbacks, max_epochs=4, **trainer_kwargs):
    L.seed_everything(0, verbose=False)
    model = make_autoencoder()
    train, val = digits_loaders()
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=max_epochs, **trainer_kwargs)
    trainer.fit(model, train, val)
    return trainer


class Seen(L.Callback):
    """What a reader of ``trainer.callback_metrics`` finds for ``KEY`` at each validation end."""

    def __init__(self) -> None:
        self.values: list[float | None] = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            value = trainer.callback_metrics.get(KEY)
            self.values.append(None if value is None else value.item())


def test_an_unmeasured_epoch_shows_no_value_to_lightning_early_stopping():
    """Budget on (forced: measured at epochs 0 and 3 only): Lightning's EarlyStopping with
    ``strict=False`` counts only the two measured epochs, never epoch 0's value again."""
    cb = monitor(max_overhead=0.05)
    sizes = iter([12, 0, 0, 12])
    cb.budget.next_probe_size = lambda: next(sizes)
    stopping = EarlyStopping(KEY, mode="max", patience=10, strict=False, check_finite=False)
    seen = Seen()
    fit([cb, stopping, seen], num_sanity_val_steps=0)
    assert [v is None for v in seen.values] == [False, True, True, False]
    # a comparison at epochs 1 and 2 would have counted as "no improvement" on the stale value
    assert stopping.wait_count <= 1


def test_readers_that_need_a_value_every_epoch_fail_at_setup_with_the_fix():
    with pytest.raises(ValueError, match=r"strict=False"):
        fit([monitor(max_overhead=0.05), EarlyStopping(KEY, mode="max")], max_epochs=1)
    for cb in (monitor(max_overhead=0.05), monitor(every_n_epochs=2)):
        with pytest.raises(ValueError, match=r"max_overhead=float\('inf'\).*same `every_n"):
            checkpoint = ModelCheckpoint(monitor=KEY, mode="max")
            fit([cb, checkpoint], max_epochs=1, enable_checkpointing=True)


def test_model_checkpoint_scores_each_checkpoint_with_the_value_of_its_epoch(tmp_path):
    cb = monitor(every_n_epochs=2)
    checkpoint = ModelCheckpoint(
        tmp_path, monitor=KEY, mode="max", every_n_epochs=2, save_top_k=-1, filename="{epoch}"
    )
    seen = Seen()
    fit([cb, checkpoint, seen], num_sanity_val_steps=0, enable_checkpointing=True)
    scores = {
        int(path.split("epoch=")[1][0]): s.item() for path, s in checkpoint.best_k_models.items()
    }
    measured = {epoch: v for epoch, v in enumerate(seen.values) if v is not None}
    assert sorted(measured) == [1, 3]
    assert scores == pytest.approx(measured)


class NoValidationStep(L.LightningModule):
    """A GAN-style loop: no ``validation_step``, a decoder, held-out data in the datamodule."""

    def __init__(self) -> None:
        super().__init__()
        self.autoencoder = make_autoencoder(dropout=0.0)
        self.decoder = self.autoencoder.decoder
        self.latent_dim = 4

    def training_step(self, batch, batch_idx):
        return self.autoencoder.training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Digits(L.LightningDataModule):
    def train_dataloader(self):
        return digits_loaders()[0]

    def val_dataloader(self):
        return digits_loaders()[1]


def test_a_module_without_validation_step_is_measured_at_each_training_epoch_end():
    cb = RecoveryMonitor(probe_size=8, steps=5, max_overhead=math.inf)
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(callbacks=[cb], max_epochs=3)
    trainer.fit(NoValidationStep(), datamodule=Digits())
    assert cb.last_logged_epoch == 2 and cb.measurements == 3
    assert math.isfinite(trainer.callback_metrics["memwatch/recovery/mre/val"].item())


class Fake(TrainValGap):
    descriptors = ("a", "b")

    def update(self) -> None:  # values go in through `_append`
        pass


def test_rolled_statistics_are_over_the_latest_value_of_every_probe_row():
    """Two slices of a 6-row probe, the second overlapping the first: the means, gaps and KS
    p-values are numpy's / scipy's over each row's latest value; staleness is the oldest age."""
    rng = np.random.default_rng(0)
    metric, table = Fake(), RollingTable(6)
    latest = {split: {d: np.full(6, np.nan) for d in "ab"} for split in ("train", "val")}
    for epoch, rows in ((0, [0, 1, 2, 3]), (2, [3, 4, 5, 0])):
        for split in ("train", "val"):
            values = {d: rng.normal(size=4) for d in "ab"}
            metric._append(split, {d: torch.from_numpy(v) for d, v in values.items()})
            for d, v in values.items():
                latest[split][d][rows] = v
        out = roll(metric, table, {s: torch.tensor(rows) for s in ("train", "val")}, None, epoch)
    for d in "ab":
        train, val = latest["train"][d], latest["val"][d]
        assert out[f"{d}/train"].item() == pytest.approx(train.mean())
        assert out[f"{d}/gap"].item() == pytest.approx(train.mean() - val.mean())
        assert out[f"{d}/ks_pvalue"].item() == pytest.approx(stats.ks_2samp(train, val).pvalue)
    assert table.staleness(3) == 3.0  # rows 1 and 2 date from epoch 0


def test_a_slice_smaller_than_the_probe_rolls_through_it():
    """A budget that allows 4 of 12 samples a measurement: three measurements cover the probe,
    and then the logged mean is the mean over the whole probe."""
    cb = monitor()
    cb.budget.next_probe_size = lambda: 4
    trainer = fit([cb], max_epochs=3, num_sanity_val_steps=0)
    table = cb.tables["spectrum"]
    assert (
        bool(table.measured("train").all())
        and table.epochs["train"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    )
    got = trainer.callback_metrics[KEY].item()
    assert got == pytest.approx(table.values["log_volume"]["train"].mean().item(), rel=1e-6)
    assert trainer.callback_metrics["memwatch/spectrum/staleness"].item() == 2.0


def test_lightning_sync_dist_advice_is_silenced_for_memwatch_keys_only():
    silence_sync_dist_advice()  # what every monitor's setup does
    message = (
        "It is recommended to use `self.log({!r}, ..., sync_dist=True)` when logging on epoch "
        "level in distributed setting to accumulate the metric across devices."
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn(message.format("memwatch/recovery/mre_gap"), PossibleUserWarning, 1)
        warnings.warn(message.format("val_loss"), PossibleUserWarning, 1)
    assert [str(w.message) for w in caught] == [message.format("val_loss")]
