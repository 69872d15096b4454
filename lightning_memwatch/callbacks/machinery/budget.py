"""The cost budget that makes the monitors safe to leave on.

All memwatch monitors of one ``Trainer`` share one budget: together they may spend
``max_overhead`` of the run's wall time outside them (every second of training steps,
validation, logging and other callbacks earns ``max_overhead`` seconds). When the monitors were
given different ``max_overhead`` values the smallest wins, so adding a monitor never raises what
the run may spend. Each of the ``N`` monitors may spend ``1 / N`` of it: a monitor's allowance
is ``max_overhead * run_seconds / N - its own seconds``, so an expensive monitor is not starved
by a cheap one that measures first at every epoch end.

A monitor's seconds are whole measurements, TensorBoard artifacts included. Its first
measurement calibrates on a small slice of the probe (:data:`MIN_PROBE` samples per split); it
is counted as spent like every other, but its cost per sample is not the prediction, because a
process's first measurement pays one-off costs (measured on the demo VAE: 3.4 s instead of
1.5 s for the whole probe, so :data:`COLD_FACTOR` discounts it until a second measurement has
been timed). Every later measurement uses the largest of ``probe_size``, ``probe_size / 2``, ...
down to :data:`MIN_PROBE` samples per split whose predicted cost fits in the monitor's allowance,
and is skipped (probe size ``0``) when none fits: a monitor never knowingly goes over budget.
``max_overhead=inf`` turns the budget off. The probe size in use and the seconds spent are
logged, so nothing happens silently.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

#: The smallest slice (per split) a measurement covers before the budget skips instead. At 16
#: training and 16 held-out digits the psi gap, the decay and the recovery KS test flagged the
#: memorizing demo VAE in 5 of 5 probe draws and the generalizing one in 0 of 5.
MIN_PROBE = 16
#: A first measurement's cost per sample is divided by this until a warm one is timed (measured
#: first/warm ratio on the demo VAE: 3.4 s / 1.5 s = 2.3).
COLD_FACTOR = 2.0


@dataclass
class RunClock:
    """The wall time of one run, shared by the monitors of a ``Trainer``: the seconds outside
    every monitor, and each monitor's own."""

    run_seconds: float = 0.0
    spent: dict[str, float] = field(default_factory=dict)
    max_overheads: dict[str, float] = field(default_factory=dict)
    _mark: float | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start (or, after a resume, restart) the clock; idempotent within one run."""
        if self._mark is None:
            self._mark = time.perf_counter()

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

    def allowance(self, name: str) -> float:
        """What ``name`` has earned and not spent: its ``1 / N`` share of the budget."""
        self.catch_up()
        share = self.max_overhead * self.run_seconds / max(len(self.max_overheads), 1)
        return share - self.spent.get(name, 0.0)


#: One clock per Trainer, dropped with it.
_CLOCKS: weakref.WeakKeyDictionary[Any, RunClock] = weakref.WeakKeyDictionary()


def run_clock(trainer: Any) -> RunClock:
    """The clock all monitors of ``trainer`` share."""
    clock = _CLOCKS.get(trainer)
    if clock is None:
        clock = _CLOCKS[trainer] = RunClock()
    return clock


@dataclass
class CostBudget:
    """One monitor's view of the shared budget: its name on the clock, its probe size and what
    one probe sample costs it."""

    max_overhead: float
    probe_size: int
    name: str = "monitor"
    spent_seconds: float = 0.0
    seconds_per_sample: float | None = None
    warm: bool = False
    clock: RunClock = field(default_factory=RunClock, repr=False)

    def __post_init__(self) -> None:
        self.clock.max_overheads.setdefault(self.name, self.max_overhead)

    def attach(self, trainer: Any, name: str) -> None:
        """Join ``trainer``'s shared clock under ``name`` (at setup)."""
        self.clock.max_overheads.pop(self.name, None)
        self.name = name
        self.clock = run_clock(trainer)
        self.clock.max_overheads[name] = self.max_overhead
        self.clock.spent.setdefault(name, self.spent_seconds)

    def start(self) -> None:
        self.clock.start()

    @property
    def overhead(self) -> float:
        """This monitor's seconds per second of the run outside all monitors so far."""
        self.clock.catch_up()
        run = self.clock.run_seconds
        return self.spent_seconds / run if run > 0 else 0.0

    def predicted(self, size: int) -> float:
        assert self.seconds_per_sample is not None
        factor = 1.0 if self.warm else 1.0 / COLD_FACTOR
        return size * self.seconds_per_sample * factor

    def next_probe_size(self) -> int:
        """Probe size (per split) for the next measurement; ``0`` means skip it."""
        floor = min(MIN_PROBE, self.probe_size)
        self.clock.catch_up()  # the run's seconds up to now; the measurement's are not
        if self.clock.max_overhead == math.inf:
            return self.probe_size
        if self.seconds_per_sample is None:
            return floor  # calibrate on a small slice
        allowance = self.clock.allowance(self.name)
        size = self.probe_size
        while size > floor and self.predicted(size) > allowance:
            size = max(floor, size // 2)
        return size if self.predicted(size) <= allowance else 0

    def charge(self, seconds: float) -> None:
        """Work of the monitor that is not a measurement (the checks on the probe when training
        starts) spent ``seconds``: spent, but no prediction of a measurement's cost."""
        self.spent_seconds += seconds
        self.clock.charge(self.name, seconds)

    def record(self, size: int, seconds: float) -> None:
        """A measurement of ``size`` samples per split took ``seconds``."""
        self.warm = self.seconds_per_sample is not None
        self.spent_seconds += seconds
        self.seconds_per_sample = seconds / size
        self.clock.charge(self.name, seconds)

    def state_dict(self) -> dict[str, Any]:
        self.clock.catch_up()
        return {
            "run_seconds": self.clock.run_seconds,
            "spent_seconds": self.spent_seconds,
            "seconds_per_sample": self.seconds_per_sample,
            "warm": self.warm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # older checkpoints: "train_seconds" was the run's seconds outside this monitor
        run = state.get("run_seconds", state.get("train_seconds", 0.0))
        self.clock.run_seconds = max(self.clock.run_seconds, float(run))
        self.spent_seconds = float(state["spent_seconds"])
        self.clock.spent[self.name] = self.spent_seconds
        per_sample = state.get("seconds_per_sample")
        self.seconds_per_sample = None if per_sample is None else float(per_sample)
        self.warm = bool(state.get("warm", per_sample is not None))
