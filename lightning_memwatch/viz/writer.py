"""The TensorBoard writer behind a Trainer, the step its scalars use, and histograms.

Rich artifacts go to TensorBoard only when a ``TensorBoardLogger`` is attached, on global rank
zero, at the step Lightning gives the scalars logged beside them, so
that images, histograms and curves line up on one step axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.utils.tensorboard import SummaryWriter


def tensorboard_writer(trainer: pl.Trainer) -> SummaryWriter | None:
    """The ``SummaryWriter`` of the trainer's first ``TensorBoardLogger``, on global rank zero.

    Returns ``None`` when no ``lightning.pytorch.loggers.TensorBoardLogger`` is attached (no
    logger, ``CSVLogger`` only, ...) and on every rank but global zero, where the logger's
    experiment is not created (Lightning would hand out a do-nothing ``DummyExperiment``).
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def global_step(trainer: pl.Trainer) -> int:
    """The step Lightning gives the scalars a callback logs now with ``pl_module.log``.

    Lightning's ``_LoggerConnector.log_metrics`` (``lightning/pytorch/trainer/connectors/
    logger_connector/logger_connector.py``, lightning 2.6) sends epoch-level metrics to the
    loggers at ``step = trainer.fit_loop.epoch_loop._batches_that_stepped``; the same counter
    is used by Lightning's ``LearningRateMonitor`` and ``DeviceStatsMonitor``. Validation runs
    before that counter is incremented for the epoch's last batch, so in
    ``on_validation_epoch_end`` it is already the step of the scalars. Metrics logged in
    ``on_train_epoch_end`` are flushed afterwards by ``_FitLoop.on_advance_end``, which
    decrements the counter around the flush (``lightning/pytorch/loops/fit_loop.py``: "loggers
    expect that the same step is used when logging epoch-end metrics"); so while the train
    epoch-end hooks run (the fit loop's epoch is processed but not completed), this returns the
    counter minus one, the step both the train and the validation epoch-end scalars land on.
    """
    fit_loop = trainer.fit_loop
    step = int(fit_loop.epoch_loop._batches_that_stepped)
    epoch = fit_loop.epoch_progress.current
    if trainer.training and epoch.processed > epoch.completed:
        step -= 1
    return step


def add_histograms(
    writer: SummaryWriter, prefix: str, values: Mapping[str, Tensor], step: int
) -> None:
    """One histogram per split: ``writer.add_histogram(f"{prefix}/{name}", finite, step)``.

    Non-finite values (a NaN score, the ``-inf`` log of a degenerate singular value) are
    dropped; a split left with no finite value is skipped. Values of any shape are flattened.

    Args:
        writer: a ``SummaryWriter`` (e.g. from :func:`tensorboard_writer`).
        prefix: tag prefix, e.g. ``"memwatch/spectrum/log_s"``.
        values: per-split samples, e.g. ``{"train": ..., "val": ...}``.
        step: the global step (:func:`global_step`).
    """
    for name, value in values.items():
        flat = torch.as_tensor(value).detach().flatten().to("cpu", torch.float64)
        finite = flat[torch.isfinite(flat)]
        if finite.numel() > 0:
            writer.add_histogram(f"{prefix}/{name}", finite.numpy(), step)
