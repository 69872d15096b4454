"""When and how a monitor measures: the schedule, the slice of the probe, the rolling table,
the timing, the cost budget and the one logging call (mixed into
:class:`~lightning_memwatch.callbacks.machinery.monitor.MemwatchMonitor`).

A monitor measures at the end of every ``every_n_epochs``-th training epoch: after its validation
when it validates, else at the end of its training epoch. The budget sizes the slice of the probe it
measures and picks the families it can afford (size ``0``: it waits;
:mod:`~lightning_memwatch.callbacks.machinery.budget`); monitors that a reader such as
``EffectAgreement`` combines measure at the same epochs (:func:`measured_together`). The logged
statistics are over the latest value of every probe sample
(:mod:`~lightning_memwatch.callbacks.machinery.rolling`). While it measures, the trainer's progress
bar says what (:mod:`~lightning_memwatch.callbacks.machinery.progress`).

An epoch the monitor does not measure logs nothing (a ``pl_module.log`` call costs about a
millisecond, more than the rest of its hooks together): its keys leave
``trainer.callback_metrics`` (:func:`~lightning_memwatch.callbacks.machinery.readers.drop_stale`)
and its ``memwatch/<family>/probe_size`` there reads 0.
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

from lightning_memwatch.callbacks.machinery.clock import run_progress
from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.callbacks.machinery.probes import train_loader
from lightning_memwatch.callbacks.machinery.progress import NO_PROGRESS, MeasurementProgress
from lightning_memwatch.callbacks.machinery.readers import drop_stale, measured_together
from lightning_memwatch.callbacks.machinery.rolling import RollingTable, roll, slice_indices
from lightning_memwatch.metrics.train_val import SPLITS, TrainValGap
from lightning_memwatch.viz import add_layout, log_split_runs

#: Matplotlib figures are drawn at every this many-th measurement of a fit: they cost
#: 0.34-0.52 s a measurement on the demo VAE (at 100 dpi), more than the measurement itself.
FIGURE_EVERY = 10
#: What an unmeasured family's ``memwatch/<family>/probe_size`` reads in ``callback_metrics``.
ZERO = torch.tensor(0.0)


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
    last_scalars: dict[str, float]
    budget: Any
    _fitting: bool
    _layout_written: bool
    _warned_no_probe: bool
    _figures_at: int
    _stale: bool
    #: Shows the running measurement on the progress bar: ``self.progress(family, i, n)`` at
    #: chunk ``i`` of ``n`` (:class:`MeasurementProgress`); shows nothing between measurements.
    progress: MeasurementProgress = NO_PROGRESS
    #: the families the measurement under way computes (a subset of ``families`` when the budget
    #: cannot afford one of them in this run), and whether it draws the figures
    families_now: tuple[str, ...] = ()
    _figures_now: bool = True
    _costs: dict[str, tuple[float, float, bool]]

    # ------------------------------------------------------------------ scheduling
    def _scheduled(self, trainer: pl.Trainer) -> bool:
        """Every ``every_n_epochs``-th training epoch (epochs ``n - 1``, ``2n - 1``, ...)."""
        return (
            not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        if self._scheduled(trainer):
            self._measure_or_skip(trainer, pl_module, start)
        elif not trainer.sanity_checking:
            self._skip(trainer, start=start)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._fitting:
            self.budget.clock.close_window("validation")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.budget.clock.close_window("train")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.budget.clock.close_window("train")
        self.budget.clock.stop()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A scheduled epoch that ran no validation (no ``validation_step``,
        ``limit_val_batches=0``, ``check_val_every_n_epoch``) is measured here instead."""
        start, epoch = time.perf_counter(), trainer.current_epoch
        if self.last_checked_epoch == epoch:  # checked after this epoch's validation
            if self._fitting:  # what the readers log now after a measurement is its cost too
                self.budget.clock.open_window(self.budget.name, self.last_logged_epoch == epoch)
            return
        if not self._scheduled(trainer):
            self._skip(trainer, start=start)
            return
        self._measure_or_skip(trainer, pl_module, start)

    def _skip(
        self, trainer: pl.Trainer, measured: tuple[str, ...] = (), start: float | None = None
    ) -> None:
        """Nothing logged: the keys of the families not measured leave
        ``trainer.callback_metrics`` and their probe size there reads 0; the hook's seconds
        since ``start`` are charged to the budget."""
        metrics = trainer.callback_metrics
        if self._stale:
            drop_stale(self, trainer, keep=measured)
            self._stale = bool(measured)
        for family in self.families:
            if family not in measured:
                metrics[f"memwatch/{family}/probe_size"] = ZERO
        if self._fitting:
            if start is not None:
                self.budget.charge(time.perf_counter() - start)
            self.budget.clock.open_window()

    def _plan(self, trainer: pl.Trainer) -> tuple[int, tuple[str, ...], bool]:
        """The next measurement's size, families and figures: the whole probe outside ``fit``,
        else the budget's (waiting for the monitors measured together), rank 0's on every rank."""
        if not self._fitting:
            return self.effective_probe_size, self.families, True
        self.budget.clock.progress = run_progress(trainer)
        self.budget.figures_wanted = self.measurements + 1 - self._figures_at >= FIGURE_EVERY
        size = self.budget.next_probe_size()
        plan = self.budget.plan
        families = self.families if plan is None or not plan.families else plan.families
        figures = self.budget.figures_wanted if plan is None else plan.figures
        if size and not self._group_ready(trainer):
            size = 0
        size, families, figures = trainer.strategy.broadcast((size, families, figures), src=0)
        return int(size), tuple(families), bool(figures)

    def _group_ready(self, trainer: pl.Trainer) -> bool:
        """Whether every monitor measured together with this one (:func:`measured_together`)
        can afford its measurement now too; one that can never afford one in this run does not
        hold the others back. Decided once per epoch for the group."""
        group = measured_together(self, trainer)
        if not group:
            return True
        group = sorted([self, *group], key=lambda m: m.budget.name)
        key = (trainer.current_epoch, tuple(m.budget.name for m in group))
        ready = self.budget.clock.group_ready
        if key not in ready:
            ready.clear()
            plans = [m.budget.decide(figures=False) for m in group]
            ready[key] = all(p.size > 0 or not p.families for p in plans)
        return ready[key]

    def _measure_or_skip(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, start: float
    ) -> None:
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
        self._fitting = trainer.state.fn == TrainerFn.FITTING
        size, families, figures = self._plan(trainer)
        if size == 0:
            self._skip(trainer, start=start)
            return
        self.families_now, self._figures_now, self._costs = families, figures, {}
        self.budget.expect(size, families)
        scalars: dict[str, Any] = {}
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
        if figures:
            self._figures_at = self.measurements
        self.last_logged_epoch = epoch  # fresh values (MemorizationEarlyStopping reads this)
        pl_module.log_dict(
            scalars, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False
        )
        log_split_runs(trainer, scalars)  # train and val in two TensorBoard colours
        self.last_scalars = {k: float(v) for k, v in scalars.items()}
        self._stale = True
        if len(families) < len(self.families):
            self._skip(trainer, measured=families)
        if self._fitting:  # the logging is the measurement's cost too
            self.budget.record(size, time.perf_counter() - start, self._costs)
            self.budget.clock.open_window(self.budget.name, len(scalars))

    def slice_inputs(self, rows: Tensor) -> dict[str, Tensor]:
        """The probe inputs a measurement of ``rows`` reads, per split."""
        return {split: self.inputs[split][rows] for split in SPLITS}

    @property
    def figures_due(self) -> bool:
        """Whether this measurement draws its matplotlib figures: every :data:`FIGURE_EVERY`-th
        measurement of a fit (the 10th, 20th, ...; not the first) when the budget affords them
        (else at the next measurement it does), and every measurement outside ``fit``
        (``trainer.validate``); histograms, images and scalars come at every measurement."""
        return not self._fitting or self._figures_now

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
        computed = time.perf_counter()
        if write is not None:
            self.progress(f"{family}, TensorBoard")
            write()
        end = time.perf_counter()
        seconds = end - start
        self._costs[family] = (computed - start, end - computed, self.figures_due)
        out = {f"memwatch/{family}/{key}": value for key, value in values.items()}
        out[f"memwatch/{family}/seconds"] = seconds
        out[f"memwatch/{family}/probe_size"] = float(size)
        return out

    def write_layout_once(self, writer: Any) -> None:
        """Add this monitor's keys to the TensorBoard custom-scalars layout, once per monitor."""
        if not self._layout_written:
            add_layout(writer, self.logged_keys)
            self._layout_written = True
