"""The cost budget that makes a monitor safe to leave on (DESIGN §5, "Cost budget").

A monitor may spend ``max_overhead`` of the run's wall time outside it: every second since
training started that the monitor did not spend itself (training steps, validation, logging,
other callbacks) earns it ``max_overhead`` seconds. Its own seconds are whole measurements,
TensorBoard artifacts included. The first measurement uses the whole probe and tells what a
probe sample costs (``seconds_per_sample``, updated at every measurement); every later one uses
the largest of ``probe_size``, ``probe_size / 2``, ... down to ``MIN_PROBE`` samples per split
whose predicted cost fits in what the monitor has earned and not spent, and is skipped (probe
size ``0``) when none fits. So the monitor never knowingly goes over budget, and after the first
measurement its share of the run stays at or under ``max_overhead``. ``max_overhead=inf``
turns the budget off. The probe size in use and
the seconds spent are logged, so nothing happens silently.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

#: The smallest probe (per split) the budget shrinks to before it skips epochs instead.
MIN_PROBE = 8


@dataclass
class CostBudget:
    """Wall-time bookkeeping: the run's seconds outside the monitor, the monitor's own seconds,
    and what one probe sample costs."""

    max_overhead: float
    probe_size: int
    train_seconds: float = 0.0
    spent_seconds: float = 0.0
    seconds_per_sample: float | None = None
    _mark: float | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start (or, after a resume, restart) the clock of the run outside the monitor."""
        self._mark = time.perf_counter()

    def _catch_up(self) -> None:
        if self._mark is not None:
            now = time.perf_counter()
            self.train_seconds += now - self._mark
            self._mark = now

    @property
    def overhead(self) -> float:
        """The monitor's seconds per second of the run outside it so far (0 before any)."""
        return self.spent_seconds / self.train_seconds if self.train_seconds > 0 else 0.0

    def next_probe_size(self) -> int:
        """Probe size (per split) for the next measurement; ``0`` means skip it."""
        self._catch_up()
        if self.seconds_per_sample is None or self.max_overhead == math.inf:
            return self.probe_size
        allowance = self.max_overhead * self.train_seconds - self.spent_seconds
        size, floor = self.probe_size, min(MIN_PROBE, self.probe_size)
        while size > floor and size * self.seconds_per_sample > allowance:
            size = max(floor, size // 2)
        return size if size * self.seconds_per_sample <= allowance else 0

    def record(self, size: int, seconds: float) -> None:
        """A measurement of ``size`` samples per split took ``seconds``; the run's clock goes on
        from now."""
        self.spent_seconds += seconds
        self.seconds_per_sample = seconds / size
        self._mark = time.perf_counter()

    def state_dict(self) -> dict[str, float | int | None]:
        state = asdict(self)
        state.pop("_mark")
        return state

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        self.train_seconds = float(state["train_seconds"])
        self.spent_seconds = float(state["spent_seconds"])
        per_sample = state.get("seconds_per_sample")
        self.seconds_per_sample = None if per_sample is None else float(per_sample)
