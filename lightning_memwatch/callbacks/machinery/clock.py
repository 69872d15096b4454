"""The wall time of one run, shared by the memwatch monitors of a ``Trainer``.

All memwatch monitors of one ``Trainer`` share one budget: together they may spend
``max_overhead`` of the run's wall time outside them (every second of training steps,
validation, logging and other callbacks earns ``max_overhead`` seconds). When the monitors were
given different ``max_overhead`` values the smallest wins, so adding a monitor never raises what
the run may spend. Each of the ``N`` monitors may spend ``1 / N`` of it (an expensive monitor is
not starved by a cheap one that measures first at every epoch end), and no more than what all of
them together have left (:meth:`RunClock.left`).

A monitor's seconds are everything it makes the run do: drawing and checking its probe when
training starts (the process's first forward-mode call included), timing its decoder, its
hooks at unmeasured epochs, each measurement with its TensorBoard artifacts and logging, and
Lightning's writing of the keys it logged: the window after the monitors' epoch-end hooks, up to
the next memwatch hook, at an epoch where a monitor measured, beyond the same window's usual
length at unmeasured epochs (:meth:`RunClock.close_window`). :class:`RunClock` counts the run's
seconds outside the monitors, each monitor's own, and the run's progress.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

#: Weight of the newest unmeasured epoch in the usual length of the window after the monitors.
BASELINE_WEIGHT = 0.2


def run_progress(trainer: Any) -> float | None:
    """The share of the run done at the end of the current epoch (by ``max_epochs`` or
    ``max_steps``, whichever ends it first); ``None`` when neither bounds the run."""
    done = []
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        done.append((trainer.current_epoch + 1) / trainer.max_epochs)
    if trainer.max_steps is not None and trainer.max_steps > 0:
        done.append(max(trainer.global_step, 1) / trainer.max_steps)
    return min(max(done), 1.0) if done else None


@dataclass
class RunClock:
    """The wall time of one run, shared by the monitors of a ``Trainer``: the seconds outside
    every monitor, each monitor's own, and the run's progress."""

    run_seconds: float = 0.0
    spent: dict[str, float] = field(default_factory=dict)
    max_overheads: dict[str, float] = field(default_factory=dict)
    #: share of the run done (:func:`run_progress`), ``None`` when unknown
    progress: float | None = None
    #: per (epoch, group): whether the monitors read together measure this epoch
    group_ready: dict[Any, bool] = field(default_factory=dict)
    #: the usual run seconds of each window after the monitors' epoch-end hooks
    baseline: dict[str, float] = field(default_factory=dict)
    #: keys logged this epoch per monitor, and the budgets to charge Lightning's writing to
    pending: dict[str, float] = field(default_factory=dict)
    budgets: dict[str, Any] = field(default_factory=dict, repr=False)
    _window: float | None = field(default=None, repr=False)
    _mark: float | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start (or, after a resume, restart) the clock; idempotent within one run."""
        if self._mark is None:
            self._mark = time.perf_counter()

    def stop(self) -> None:
        """Training ended: the run's seconds stop counting (until a next fit starts it)."""
        self.catch_up()
        self._mark = None

    def catch_up(self) -> None:
        if self._mark is not None:
            now = time.perf_counter()
            self.run_seconds += now - self._mark
            self._mark = now

    def charge(self, name: str, seconds: float) -> None:
        """``name`` spent ``seconds`` measuring: they are not run time."""
        self.spent[name] = self.spent.get(name, 0.0) + seconds
        self._mark = time.perf_counter()

    @property
    def max_overhead(self) -> float:
        return min(self.max_overheads.values(), default=math.inf)

    def share(self, run_seconds: float) -> float:
        """One monitor's ``1 / N`` of the budget earned by ``run_seconds`` of the run."""
        return self.max_overhead * run_seconds / max(len(self.max_overheads), 1)

    def left(self, name: str, run_seconds: float) -> float:
        """What ``name`` may still spend once the run has ``run_seconds``: its ``1 / N`` share
        less its own seconds, and no more than what all monitors together have left (a monitor
        whose train-start checks overran its share leaves the others less)."""
        own = self.share(run_seconds) - self.spent.get(name, 0.0)
        pooled = self.max_overhead * run_seconds - sum(self.spent.values())
        return min(own, pooled)

    def allowance(self, name: str) -> float:
        """What ``name`` has earned and may spend now (:meth:`left`)."""
        self.catch_up()
        return self.left(name, self.run_seconds)

    def final_allowance(self, name: str) -> float:
        """What ``name`` will have earned and may spend by the end of the run, projected from
        its progress (``inf`` when the run's length is unknown)."""
        self.catch_up()
        if not self.progress:
            return math.inf
        return self.left(name, self.run_seconds / self.progress)

    def open_window(self, name: str | None = None, keys: float = 0.0) -> None:
        """A monitor's epoch-end hook ends (after logging ``keys`` keys, if it measured): what
        runs from here to the next memwatch hook is Lightning's writing of the logged values."""
        self.catch_up()
        self._window = self.run_seconds
        if name is not None and keys:
            self.pending[name] = self.pending.get(name, 0.0) + keys

    def close_window(self, kind: str) -> None:
        """The next memwatch hook: the window's run seconds beyond its usual length (``kind``:
        after validation or after the training epoch) go to the monitors that logged in it,
        in proportion to their keys; a window without them updates its usual length."""
        if self._window is None:
            return
        self.catch_up()
        elapsed, self._window = self.run_seconds - self._window, None
        if not self.pending:
            usual = self.baseline.get(kind, elapsed)
            self.baseline[kind] = usual + BASELINE_WEIGHT * (elapsed - usual)
            return
        extra = max(elapsed - self.baseline.get(kind, 0.0), 0.0)
        total = sum(self.pending.values())
        for name, keys in self.pending.items():
            seconds = extra * keys / total
            self.run_seconds -= seconds
            self.spent[name] = self.spent.get(name, 0.0) + seconds
            budget = self.budgets.get(name)
            if budget is not None:
                budget.after_seconds = seconds
        self.pending = {}


#: One clock per Trainer, dropped with it.
_CLOCKS: weakref.WeakKeyDictionary[Any, RunClock] = weakref.WeakKeyDictionary()


def run_clock(trainer: Any) -> RunClock:
    """The clock all monitors of ``trainer`` share."""
    clock = _CLOCKS.get(trainer)
    if clock is None:
        clock = _CLOCKS[trainer] = RunClock()
    return clock
