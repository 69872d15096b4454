"""Where :class:`~lightning_memwatch.callbacks.MemorizationEarlyStopping` shows its decisions.

- the console: the reason goes to a child of Lightning's ``lightning.pytorch`` logger (level
  INFO, with a stderr handler unless the root logger has one), the way Lightning's
  ``EarlyStopping`` prints its message (``_log_info``: rank-prefixed under DDP);
- TensorBoard: a text entry (tag :data:`TEXT_TAG`) on every ``TensorBoardLogger``, and the
  decision's scalar on the custom-scalars layout;
- every logger: the scalar, 1.0 when the rule fired at a check and 0.0 when it did not, logged
  with ``pl_module.log`` at the end of the training epoch.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.rank_zero import rank_prefixed_message
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_memwatch.viz import add_layout, global_step

#: The stopper's logger: its records propagate to ``lightning.pytorch``'s console handler.
log = logging.getLogger("lightning.pytorch.callbacks.memwatch")

#: What every memwatch key starts with.
PREFIX = "memwatch/"
#: Default key of the decision scalar.
TRIGGERED_KEY = "memwatch/early_stopping/triggered"
#: TensorBoard text tag of the message written when the rule fires.
TEXT_TAG = "memwatch/early_stopping"


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` of ``trainer`` (global rank 0)."""
    if not trainer.is_global_zero:
        return []
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def announce(trainer: pl.Trainer, message: str) -> None:
    """Print ``message`` as Lightning's ``EarlyStopping`` prints its own (``_log_info``)."""
    rank = trainer.global_rank if trainer.world_size > 1 else None
    log.info(rank_prefixed_message(message, rank))


def write_text(trainer: pl.Trainer, message: str) -> None:
    """Write ``message`` to TensorBoard at the step of the epoch's scalars (:func:`global_step`:
    called from ``on_train_epoch_end``, the step the decision scalar lands on)."""
    for writer in tensorboard_writers(trainer):
        writer.add_text(TEXT_TAG, message, global_step=global_step(trainer))


def lay_out(trainer: pl.Trainer, key: str) -> None:
    """Add ``key`` to the custom-scalars layout of every TensorBoard writer."""
    for writer in tensorboard_writers(trainer):
        add_layout(writer, [key])


def log_decision(
    trainer: pl.Trainer, pl_module: pl.LightningModule, key: str, fired: bool | None
) -> None:
    """Log ``key`` as ``float(fired)`` for the epoch; ``None`` (no check this epoch) takes an
    earlier value out of ``trainer.callback_metrics`` instead, so no reader sees it as fresh."""
    if fired is None:
        trainer.callback_metrics.pop(key, None)
        return
    pl_module.log(
        key,
        float(fired),
        on_step=False,
        on_epoch=True,
        sync_dist=False,  # the decision is already the same on every rank
        rank_zero_only=False,
    )


def check_distinct_log_keys(stopper: Any, callbacks: Iterable[Any]) -> None:
    """Fail when another attached callback logs its decision under ``stopper.log_key``:
    Lightning would average the two values into one."""
    for other in callbacks:
        if other is not stopper and getattr(other, "log_key", None) == stopper.log_key:
            suggestion = f"{stopper.log_key}_{stopper.monitor.rsplit('/', 1)[-1]}"
            raise ValueError(
                f"`{type(stopper).__name__}(monitor={stopper.monitor!r})` and"
                f" `{type(other).__name__}(monitor={getattr(other, 'monitor', None)!r})` both log"
                f" their decision as {stopper.log_key!r}: Lightning would average the two. Pass"
                f" a distinct `log_key=` to one of them, such as {suggestion!r}"
            )


def check_count(name: str, value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"Expected `{name}` to be a non-negative integer but got {value!r}")
    return int(value)


def check_key(name: str, value: object, example: str) -> str:
    if not isinstance(value, str) or not value.startswith(PREFIX) or value == PREFIX:
        raise ValueError(
            f"Expected `{name}` to be a metric key starting with {PREFIX!r}, such as"
            f" {example!r}, but got {value!r}"
        )
    return value
