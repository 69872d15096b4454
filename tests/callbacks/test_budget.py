"""The cost budget's decisions on a fake clock (no real timing: these machines are shared)."""

from __future__ import annotations

import math

import pytest

from lightning_memwatch.callbacks import budget as budget_module
from lightning_memwatch.callbacks.budget import CostBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    return clock


def run(budget: CostBudget, clock: Clock, train: float, seconds_per_sample: float, n: int):
    """``n`` epochs of ``train`` seconds each, a measurement after each; the sizes chosen."""
    sizes = []
    budget.start()
    for _ in range(n):
        clock.now += train
        size = budget.next_probe_size()
        sizes.append(size)
        if size:
            clock.now += size * seconds_per_sample
            budget.record(size, size * seconds_per_sample)
    return sizes


def test_first_measurement_is_whole_then_the_share_stays_within_budget(clock):
    budget = CostBudget(max_overhead=0.05, probe_size=64)
    # a whole-probe measurement costs 6.4 s against 10 s of training per epoch
    sizes = run(budget, clock, train=10.0, seconds_per_sample=0.1, n=200)
    assert sizes[0] == 64
    assert 0 in sizes and set(sizes) <= {0, 8, 16, 32, 64}
    # after the first (calibrating) measurement the monitor never goes over its share
    first = 6.4
    assert budget.spent_seconds - first <= 0.05 * budget.train_seconds
    # and it uses what it has: within one smallest measurement of the limit
    assert budget.spent_seconds >= 0.05 * budget.train_seconds - 0.8
    assert budget.train_seconds == pytest.approx(2000.0)


def test_halves_to_what_fits_before_skipping(clock):
    budget = CostBudget(max_overhead=0.05, probe_size=64)
    budget.start()
    clock.now += 100.0
    assert budget.next_probe_size() == 64
    budget.record(64, 0.64)  # 0.01 s a sample; earned 5 s, spent 0.64
    clock.now += 0.0
    assert budget.next_probe_size() == 64  # 4.36 s left, 0.64 s needed
    budget.record(64, 4.0)  # the cost went up: 0.0625 s a sample, 0.36 s left
    assert budget.next_probe_size() == 0  # 8 samples would take 0.5 s
    clock.now += 4.0  # +0.2 s earned: 0.56 s left
    assert budget.next_probe_size() == 8


def test_infinite_overhead_measures_every_time_and_resume_keeps_the_books(clock):
    free = CostBudget(max_overhead=math.inf, probe_size=32)
    assert run(free, clock, train=0.001, seconds_per_sample=10.0, n=5) == [32] * 5

    budget = CostBudget(max_overhead=0.05, probe_size=64)
    run(budget, clock, train=10.0, seconds_per_sample=0.1, n=3)
    restored = CostBudget(max_overhead=0.05, probe_size=64)
    restored.load_state_dict(budget.state_dict())
    assert restored.state_dict() == budget.state_dict()
    assert restored.seconds_per_sample == pytest.approx(0.1)
