"""The cost budget that makes a monitor safe to leave on (DESIGN §5, "Cost budget").

A monitor may spend ``max_overhead`` of the training wall time (time inside training epochs,
validation excluded). It times itself and the training epochs; whenever its total so far is over
budget, the next measurement uses half the probe, down to ``MIN_PROBE`` samples per split, and
below that the measurement is skipped until training time has caught up. The probe size in use
(``0`` for a skipped epoch) and the seconds spent are logged, so nothing happens silently.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

#: The smallest probe (per split) the budget shrinks to before it skips epochs instead.
MIN_PROBE = 8


@dataclass
class CostBudget:
    """Wall-time bookkeeping: training seconds, the monitor's seconds and the probe in use."""

    max_overhead: float
    probe_size: int
    train_seconds: float = 0.0
    spent_seconds: float = 0.0
    _epoch_start: float | None = field(default=None, repr=False)

    def start_train_epoch(self) -> None:
        self._epoch_start = time.perf_counter()

    def end_train_epoch(self) -> None:
        if self._epoch_start is not None:
            self.train_seconds += time.perf_counter() - self._epoch_start
            self._epoch_start = None

    def record(self, seconds: float) -> None:
        self.spent_seconds += seconds

    @property
    def overhead(self) -> float:
        """Seconds spent measuring per second of training so far (0 before any training)."""
        return self.spent_seconds / self.train_seconds if self.train_seconds > 0 else 0.0

    def next_probe_size(self) -> int:
        """Probe size for the next measurement; ``0`` means skip it. Updates the size in use."""
        if self.overhead <= self.max_overhead:
            return self.probe_size
        floor = min(MIN_PROBE, self.probe_size)
        if self.probe_size > floor:
            self.probe_size = max(floor, self.probe_size // 2)
            return self.probe_size
        return 0

    def state_dict(self) -> dict[str, float | int]:
        state = asdict(self)
        state.pop("_epoch_start")
        return state

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.probe_size = int(state["probe_size"])
        self.train_seconds = float(state["train_seconds"])
        self.spent_seconds = float(state["spent_seconds"])
