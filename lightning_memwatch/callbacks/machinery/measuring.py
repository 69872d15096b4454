"""When and how a monitor measures: the schedule, the slice of the probe, the rolling table,
the timing, the cost budget and the one logging call (mixed into
:class:`~lightning_memwatch.callbacks.machinery.monitor.MemwatchMonitor`).

A monitor measures at the end of every ``every_n_epochs``-th training epoch: after its validation
when it validates, else at the end of its training epoch. The budget sizes the slice of the probe it
measures (``0``: skip); the logged statistics are over the latest value of every probe sample
(:mod:`~lightning_memwatch.callbacks.machinery.rolling`). While it measures, the trainer's progress
bar says what (:mod:`~lightning_memwatch.callbacks.machinery.progress`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.callbacks.machinery.probes import train_loader
from lightning_memwatch.callbacks.machinery.progress import NO_PROGRESS, MeasurementProgress
from lightning_memwatch.callbacks.machinery.readers import drop_stale
from lightning_memwatch.callbacks.machinery.rolling import RollingTable, roll, slice_indices
from lightning_memwatch.metrics.train_val import SPLITS, TrainValGap
from lightning_memwatch.viz import add_layout, log_split_runs

#: Matplotlib figures are drawn at every this many-th measurement of a fit: they cost
#: 0.34-0.52 s a measurement on the demo VAE (at 100 dpi), more than the measurement itself.
FIGURE_EVERY = 10


class Measuring:
    """The measuring half of a monitor; the configuration half is ``MemwatchMonitor``."""

    # set by MemwatchMonitor.__init__
    every_n_epochs: int
    effective_probe_size: int
    inputs: dict[str, Tensor]
    tables: dict[str, RollingTable]
    cursor: int
    measurements: int
    last_logged_epoch: int | None
    last_checked_epoch: int | None
    budget: Any
    _fitting: bool
    _layout_written: bool
    _warned_no_probe: bool
    #: Shows the running measurement on the progress bar: ``self.progress(family, i, n)`` at
    #: chunk ``i`` of ``n`` (:class:`MeasurementProgress`); shows nothing between measurements.
    progress: MeasurementProgress = NO_PROGRESS

    # ------------------------------------------------------------------ scheduling
    def _scheduled(self, trainer: pl.Trainer) -> bool:
        """Every ``every_n_epochs``-th training epoch (epochs ``n - 1``, ``2n - 1``, ...)."""
        return (
            not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._scheduled(trainer):
            self._measure_or_skip(trainer, pl_module)
        elif not trainer.sanity_checking:
            drop_stale(self, trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A scheduled epoch that ran no validation (no ``validation_step``,
        ``limit_val_batches=0``, ``check_val_every_n_epoch``) is measured here instead."""
        if not self._scheduled(trainer):
            drop_stale(self, trainer)
            return
        if self.last_checked_epoch == trainer.current_epoch:
            return
        self._measure_or_skip(trainer, pl_module)

    def _measure_or_skip(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        self.last_checked_epoch = epoch
        if not self.inputs:
            if train_loader(trainer, pl_module) is None:
                if not self._warned_no_probe:
                    rank_zero_warn(
                        f"{type(self).__name__} has no training data to draw its probe from: "
                        "run `trainer.fit` first, or validate with a datamodule"
                    )
                    self._warned_no_probe = True
                return
            self._prepare_probes(trainer, pl_module)
        # the budget is a share of training time: outside fit (validate) the whole probe
        fitting = self._fitting = trainer.state.fn == TrainerFn.FITTING
        size = self.budget.next_probe_size() if fitting else self.effective_probe_size
        size = int(trainer.strategy.broadcast(size, src=0))
        scalars: dict[str, Any] = {}
        start = time.perf_counter()
        if size > 0:
            device = pl_module.device
            rows = slice_indices(self.cursor, size, self.effective_probe_size)
            self.progress = MeasurementProgress(trainer)
            try:
                with measurement_context(pl_module, device):
                    # clones: inputs gathered under inference mode cannot enter autograd
                    inputs = {k: v.to(device).clone() for k, v in self.slice_inputs(rows).items()}
                    for timed in self.measure(trainer, pl_module, inputs, rows.to(device)).values():
                        scalars.update(timed)
            finally:
                self.progress.close()
                self.progress = NO_PROGRESS
            self.cursor = (self.cursor + size) % self.effective_probe_size
            self.measurements += 1
            self.last_logged_epoch = epoch  # fresh values (MemorizationEarlyStopping reads this)
        else:
            drop_stale(self, trainer)
        for family in self.families:  # a skipped epoch shows as probe size 0, nothing else
            scalars.setdefault(f"memwatch/{family}/probe_size", float(size))
        pl_module.log_dict(
            scalars,
            on_step=False,
            on_epoch=True,
            sync_dist=False,
            rank_zero_only=False,
        )
        log_split_runs(trainer, scalars)  # train and val in two TensorBoard colours
        if fitting and size > 0:  # the logging is the measurement's cost too
            self.budget.record(size, time.perf_counter() - start)

    def slice_inputs(self, rows: Tensor) -> dict[str, Tensor]:
        """The probe inputs a measurement of ``rows`` reads, per split."""
        return {split: self.inputs[split][rows] for split in SPLITS}

    @property
    def figures_due(self) -> bool:
        """Whether this measurement draws its matplotlib figures: every :data:`FIGURE_EVERY`-th
        measurement of a fit (the 10th, 20th, ...; not the first, which would add matplotlib's
        one-off start-up to the calibration), and every measurement outside ``fit``
        (``trainer.validate``); histograms, images and scalars come at every measurement."""
        return not self._fitting or (self.measurements + 1) % FIGURE_EVERY == 0

    def rolled(
        self,
        trainer: pl.Trainer,
        family: str,
        metric: TrainValGap,
        rows: Tensor | dict[str, Tensor],
    ) -> dict[str, Tensor]:
        """The scalars of ``metric`` over the rolling table of ``family``, after moving into it
        what ``metric`` was just updated with (this rank's probe ``rows``, per split or the same
        for both), plus the table's ``staleness``."""
        table = self.tables.setdefault(family, RollingTable(self.effective_probe_size))
        rows_by_split = rows if isinstance(rows, dict) else {split: rows for split in SPLITS}
        out = roll(metric, table, rows_by_split, trainer.strategy, trainer.current_epoch)
        out["staleness"] = torch.tensor(table.staleness(trainer.current_epoch))
        return out

    def timed(
        self,
        family: str,
        size: int,
        compute: Callable[[], dict[str, Tensor]],
        write: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Run one family's measurement, then ``write`` its TensorBoard artifacts (both count in
        its seconds), prefix its keys, add its seconds and probe size."""
        start = time.perf_counter()
        self.progress(family)
        values = compute()
        if write is not None:
            self.progress(f"{family}, TensorBoard")
            write()
        seconds = time.perf_counter() - start
        out = {f"memwatch/{family}/{key}": value for key, value in values.items()}
        out[f"memwatch/{family}/seconds"] = seconds
        out[f"memwatch/{family}/probe_size"] = float(size)
        return out

    def write_layout_once(self, writer: Any) -> None:
        """Add this monitor's keys to the TensorBoard custom-scalars layout, once per monitor."""
        if not self._layout_written:
            add_layout(writer, self.logged_keys)
            self._layout_written = True
