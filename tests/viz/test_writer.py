"""The writer behind a Trainer, and artifacts on the step of Lightning's own scalars."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing import event_accumulator as ea
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from lightning_memwatch.viz import add_histograms, global_step, tensorboard_writer

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False}


class Tiny(pl.LightningModule):
    """Three training batches and one validation batch per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).square().mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.layer(batch[0]).square().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(2, 2)), batch_size=2)


class LogsBoth(pl.Callback):
    """Logs a scalar with ``pl_module.log`` and a histogram at :func:`global_step`, per hook."""

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> None:
        pl_module.log(f"probe/{name}", 1.0)
        add_histograms(
            tensorboard_writer(trainer), "hist", {name: torch.ones(3)}, global_step(trainer)
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "train_epoch_end")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "validation_epoch_end")


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated")  # lightning vs torch, not ours
def test_artifacts_land_on_the_step_of_the_scalars_logged_beside_them(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=logger,
        callbacks=[LogsBoth()],
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        **QUIET,
    )
    trainer.fit(Tiny())

    acc = ea.EventAccumulator(logger.log_dir, size_guidance={ea.HISTOGRAMS: 0, ea.SCALARS: 0})
    acc.Reload()
    for hook in ("train_epoch_end", "validation_epoch_end"):
        scalar_steps = [e.step for e in acc.Scalars(f"probe/{hook}")]
        assert scalar_steps == [2, 5], hook  # 3 batches per epoch, steps counted from 0
        assert [e.step for e in acc.Histograms(f"hist/{hook}")] == scalar_steps, hook


def test_tensorboard_writer_is_the_first_tensorboard_loggers_experiment(tmp_path: Path) -> None:
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(logger=[CSVLogger(tmp_path), tensorboard], **QUIET)
    writer = tensorboard_writer(trainer)
    assert isinstance(writer, SummaryWriter)
    assert writer is tensorboard.experiment
    assert isinstance(
        tensorboard_writer(pl.Trainer(logger=TensorBoardLogger(tmp_path))), SummaryWriter
    )


@pytest.mark.parametrize("logger", ["csv", False])
def test_no_writer_without_a_tensorboard_logger(tmp_path: Path, logger: object) -> None:
    logger = CSVLogger(tmp_path) if logger == "csv" else logger
    assert tensorboard_writer(pl.Trainer(logger=logger, default_root_dir=tmp_path, **QUIET)) is None


def test_no_writer_off_global_rank_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensorboard = TensorBoardLogger(tmp_path)
    trainer = pl.Trainer(logger=tensorboard, **QUIET)
    monkeypatch.setattr(pl.Trainer, "is_global_zero", property(lambda self: False))
    assert tensorboard_writer(trainer) is None
    assert tensorboard._experiment is None  # not created on the other ranks
