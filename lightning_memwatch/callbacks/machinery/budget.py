"""The cost budget that makes the monitors safe to leave on: one monitor's decisions.

All memwatch monitors of one ``Trainer`` share one budget, ``max_overhead`` of the run's wall
time outside them, each ``1 / N`` of it (:mod:`~lightning_memwatch.callbacks.machinery.clock`,
which also counts what is charged). Before a measurement the monitor predicts its cost from
timed decoder calls (:mod:`~lightning_memwatch.callbacks.machinery.costs`; a family not measured
yet in this run :data:`UNMEASURED_MARGIN` times dearer, and each family's later predictions
scaled by what its last measurement cost against its prediction) and measures the largest of
``probe_size``, ``probe_size / 2``, ... down to :data:`MIN_PROBE` samples per split that fits in
what it has earned and not spent; when none fits it waits. A family whose smallest measurement
does not fit even in what the monitor will have earned by the end of the run (projected from
the epochs or steps done) is skipped and named (:attr:`CostBudget.never`): a monitor never
knowingly goes over budget, the first epoch included. ``max_overhead=inf`` turns it off.

Without timed decoder calls (a budget used on its own) the first measurement calibrates on a
:data:`MIN_PROBE` slice and later ones are predicted from its cost per sample
(:data:`COLD_FACTOR` discounts a first measurement's one-off costs until a second is timed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lightning_memwatch.callbacks.machinery.clock import RunClock, run_clock
from lightning_memwatch.callbacks.machinery.costs import (
    FIGURE_SECONDS,
    FIGURE_WARMUP_SECONDS,
    FORWARD_MODE_FAMILIES,
    JVP_WARMUP_SECONDS,
    KEY_SECONDS,
    OTHER_FAMILY_OPS,
    UnitCosts,
    Work,
    figures_warm,
    jvp_warm,
)

#: The smallest slice (per split) a measurement covers before the budget waits instead. At 16
#: training and 16 held-out digits the psi gap, the decay and the recovery KS test flagged the
#: memorizing demo VAE in 5 of 5 probe draws and the generalizing one in 0 of 5.
MIN_PROBE = 16
#: Without timed decoder calls: a first measurement's cost per sample is divided by this until a
#: warm one is timed (measured first/warm ratio on the demo VAE: 3.4 s / 1.5 s = 2.3).
COLD_FACTOR = 2.0
#: A family not measured yet in this run is predicted this much dearer than its count of decoder
#: calls says (first measurements of a process cost up to 2x a later one).
UNMEASURED_MARGIN = 1.5
#: A family without a count of decoder work costs this many forwards of the slice.
FALLBACK_FORWARDS = 200.0


@dataclass
class Plan:
    """One measurement decided: samples per split (``0``: wait), the families measured, whether
    the matplotlib figures are drawn, and its predicted seconds."""

    size: int
    families: tuple[str, ...]
    figures: bool = False
    predicted: float = 0.0


@dataclass
class CostBudget:
    """One monitor's view of the shared budget: its name on the clock, its probe size, its cost
    model (``units`` timed when training starts, ``work`` the decoder work of a family on a
    slice) and what its measurements cost against their predictions."""

    max_overhead: float
    probe_size: int
    name: str = "monitor"
    seconds_per_sample: float | None = None
    warm: bool = False
    clock: RunClock = field(default_factory=RunClock, repr=False)
    units: UnitCosts | None = None
    work: Callable[[str, int], Work | None] | None = field(default=None, repr=False)
    families: tuple[str, ...] = ()
    #: keys a measurement logs (its logging's first prediction)
    keys: int = 0
    #: per family: measured seconds / predicted seconds of its decoder work, last measurement
    factors: dict[str, float] = field(default_factory=dict)
    #: per family: seconds of its TensorBoard artifacts, without and with the figures
    writes: dict[str, float] = field(default_factory=dict)
    figure_costs: dict[str, float] = field(default_factory=dict)
    #: seconds of the last measurement outside its families, and of Lightning's writing after it
    outside_seconds: float | None = None
    after_seconds: float = 0.0
    #: seconds of the work when training starts (probe, checks, timing)
    start_seconds: float = 0.0
    #: families never affordable in this run at the latest check: their smallest measurement's
    #: predicted seconds and what the monitor will have earned by the end of the run
    never: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: whether the next measurement should draw the figures (set by the monitor)
    figures_wanted: bool = False
    plan: Plan | None = None
    #: per family: the predicted seconds of the measurement under way (before its factor)
    expected: dict[str, float] = field(default_factory=dict, repr=False)
    #: per (family, size): the seconds of its decoder work, until the next measurement
    _raw: dict[tuple[str, int], float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.clock.max_overheads.setdefault(self.name, self.max_overhead)

    def attach(self, trainer: Any, name: str) -> None:
        """Join ``trainer``'s shared clock under ``name`` (at setup)."""
        spent = self.spent_seconds
        self.clock.max_overheads.pop(self.name, None)
        self.name = name
        self.clock = run_clock(trainer)
        self.clock.max_overheads[name] = self.max_overhead
        self.clock.spent.setdefault(name, spent)
        self.clock.budgets[name] = self

    def start(self) -> None:
        self.clock.start()

    def configure(self, monitor: Any, units: UnitCosts | None) -> None:
        """Take ``monitor``'s families, logged keys and decoder work, and its timed calls."""
        self.families, self.keys = tuple(monitor.families), len(monitor.logged_keys)
        self.work, self.units, self._raw = monitor.work, units, {}

    @property
    def spent_seconds(self) -> float:
        """All this monitor's seconds so far (measurements, train start, logging)."""
        return self.clock.spent.get(self.name, 0.0)

    @spent_seconds.setter
    def spent_seconds(self, seconds: float) -> None:
        self.clock.spent[self.name] = seconds

    @property
    def overhead(self) -> float:
        """This monitor's seconds per second of the run outside all monitors so far."""
        self.clock.catch_up()
        run = self.clock.run_seconds
        return self.spent_seconds / run if run > 0 else 0.0

    # ----------------------------------------------------------------- prediction
    def predicted(self, size: int) -> float:
        """Without timed decoder calls: a measurement of ``size`` from the last cost per sample."""
        assert self.seconds_per_sample is not None
        factor = 1.0 if self.warm else 1.0 / COLD_FACTOR
        return size * self.seconds_per_sample * factor

    def raw_seconds(self, family: str, size: int) -> float:
        """Seconds of ``family``'s decoder work on ``size`` samples per split, by its count."""
        assert self.units is not None
        cached = self._raw.get((family, size))
        if cached is None:
            work = self.work(family, size) if self.work is not None else None
            if work is None:
                forwards = FALLBACK_FORWARDS * self.units.forward_seconds(size)
                cached = forwards + OTHER_FAMILY_OPS * self.units.op
            else:
                cached = self.units.seconds(work)
            self._raw[(family, size)] = cached
        return cached

    def factor(self, family: str) -> float:
        """What ``family``'s count of decoder work is multiplied by: its last measurement's
        seconds against that count; for a family not measured yet, :data:`UNMEASURED_MARGIN`
        times the geometric mean of this monitor's measured families' (the timed calls are
        off for all of them alike when the machine's load changed since they were timed)."""
        if family in self.factors:
            return self.factors[family]
        measured = [f for f in self.factors.values() if f > 0]
        if not measured:
            return UNMEASURED_MARGIN
        return UNMEASURED_MARGIN * math.exp(sum(math.log(f) for f in measured) / len(measured))

    def family_seconds(self, family: str, size: int) -> float:
        """Predicted seconds of ``family``'s computation on ``size`` samples per split."""
        return self.raw_seconds(family, size) * self.factor(family)

    def expect(self, size: int, families: tuple[str, ...]) -> None:
        """A measurement of ``families`` on ``size`` samples starts: keep what their decoder
        work is predicted to cost now (a recovery's work depends on what was recovered)."""
        if self.units is not None:
            self.expected = {f: self.raw_seconds(f, size) for f in families}

    def predict(self, size: int, families: tuple[str, ...], figures: bool = False) -> float:
        """Predicted seconds of a measurement of ``families`` on ``size`` samples per split,
        its logging, artifacts (``figures``: with the matplotlib figures) and any one-off cost
        this process has still to pay."""
        outside = self.outside_seconds
        total = (KEY_SECONDS * self.keys if outside is None else outside) + self.after_seconds
        for family in families:
            total += self.family_seconds(family, size) + self.writes.get(family, 0.0)
            if figures:
                total += self.figure_costs.get(family, FIGURE_SECONDS)
        if figures and not figures_warm():
            total += FIGURE_WARMUP_SECONDS
        if not jvp_warm() and any(f in FORWARD_MODE_FAMILIES for f in families):
            total += JVP_WARMUP_SECONDS
        return total

    # ------------------------------------------------------------------- decisions
    def _sizes(self) -> list[int]:
        """``probe_size``, ``probe_size / 2``, ... down to the floor."""
        floor, size, sizes = min(MIN_PROBE, self.probe_size), self.probe_size, []
        while size > floor:
            sizes.append(size)
            size //= 2
        return [*sizes, floor]

    def decide(self, figures: bool | None = None) -> Plan:
        """The next measurement (see the module docstring), without recording anything."""
        figures = self.figures_wanted if figures is None else figures
        self.clock.catch_up()  # the run's seconds up to now; the measurement's are not
        if self.clock.max_overhead == math.inf:
            return Plan(self.probe_size, self.families, figures)
        if self.units is None:
            return Plan(self._calibrated_size(), self.families, figures)
        now, end = self.clock.allowance(self.name), self.clock.final_allowance(self.name)
        floor = self._sizes()[-1]
        affordable = tuple(f for f in self.families if self.predict(floor, (f,)) <= end)
        for draw in (True, False) if figures else (False,):
            for size in self._sizes():
                cost = self.predict(size, affordable, draw)
                if affordable and cost <= now:
                    return Plan(size, affordable, draw, cost)
        return Plan(0, affordable, False, self.predict(floor, affordable))

    def _calibrated_size(self) -> int:
        floor = min(MIN_PROBE, self.probe_size)
        if self.seconds_per_sample is None:
            return floor  # calibrate on a small slice
        allowance = self.clock.allowance(self.name)
        size = self.probe_size
        while size > floor and self.predicted(size) > allowance:
            size = max(floor, size // 2)
        return size if self.predicted(size) <= allowance else 0

    def next_probe_size(self) -> int:
        """Probe size (per split) for the next measurement; ``0`` means wait. The decision is
        kept in :attr:`plan`, the families never affordable in :attr:`never`."""
        self.plan = self.decide()
        if self.units is not None and self.clock.max_overhead != math.inf:
            end = self.clock.final_allowance(self.name)
            floor = self._sizes()[-1]
            self.never = {  # near the run's end a family measured before just waits
                f: (self.predict(floor, (f,)), end)
                for f in self.families
                if f not in self.plan.families and f not in self.factors
            }
        return self.plan.size

    # --------------------------------------------------------------------- books
    def charge(self, seconds: float) -> None:
        """Work of the monitor that is not a measurement (the checks on the probe when training
        starts) spent ``seconds``: spent, but no prediction of a measurement's cost."""
        self.clock.charge(self.name, seconds)

    @contextmanager
    def charged_start(self) -> Iterator[None]:
        """Charge the block's wall time to this monitor as train-start work (the probe, its
        checks, the decoder's timing): spent, and kept apart in :attr:`start_seconds`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.start_seconds += seconds
            self.charge(seconds)

    def record(
        self,
        size: int,
        seconds: float,
        costs: dict[str, tuple[float, float, bool]] | None = None,
    ) -> None:
        """A measurement of ``size`` samples per split took ``seconds``; ``costs``: per family,
        the seconds of its computation, of its TensorBoard artifacts, and whether these
        included the figures."""
        self.warm = self.seconds_per_sample is not None
        self.seconds_per_sample = seconds / size
        self.clock.charge(self.name, seconds)
        self._raw = {}  # the work of the next measurement depends on this one's
        if not costs or self.units is None:
            return
        families = 0.0
        for family, (compute, write, figures) in costs.items():
            raw = self.expected.get(family)
            raw = self.raw_seconds(family, size) if raw is None else raw
            if figures:  # the figures' profiles and drawing: beyond the usual measurement
                usual = raw * self.factor(family) + self.writes.get(family, 0.0)
                self.figure_costs[family] = max(compute + write - usual, 0.0)
            else:
                if raw > 0:
                    self.factors[family] = compute / raw
                self.writes[family] = write
            families += compute + write
        self.outside_seconds = max(seconds - families, 0.0)
        self.expected = {}

    def state_dict(self) -> dict[str, Any]:
        self.clock.catch_up()
        return {
            "run_seconds": self.clock.run_seconds,
            "spent_seconds": self.spent_seconds,
            "seconds_per_sample": self.seconds_per_sample,
            "warm": self.warm,
            "factors": dict(self.factors),
            "start_seconds": self.start_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # older checkpoints: "train_seconds" was the run's seconds outside this monitor
        run = state.get("run_seconds", state.get("train_seconds", 0.0))
        self.clock.run_seconds = max(self.clock.run_seconds, float(run))
        self.spent_seconds = float(state["spent_seconds"])
        per_sample = state.get("seconds_per_sample")
        self.seconds_per_sample = None if per_sample is None else float(per_sample)
        self.warm = bool(state.get("warm", per_sample is not None))
        self.factors = {f: float(v) for f, v in state.get("factors", {}).items()}
        self.start_seconds = float(state.get("start_seconds", 0.0))
