"""The cost budget's decisions on a fake clock (no real timing: these machines are shared)."""

from __future__ import annotations

import math

import pytest

from lightning_memwatch.callbacks.machinery import budget as budget_module
from lightning_memwatch.callbacks.machinery.budget import (
    COLD_FACTOR,
    MIN_PROBE,
    CostBudget,
    RunClock,
)


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


def run(budgets, clock: Clock, train: float, seconds_per_sample, n: int):
    """``n`` epochs of ``train`` seconds each, a measurement by each budget after each; the
    sizes chosen, per budget. ``seconds_per_sample`` is one cost per budget (or one for all)."""
    budgets = budgets if isinstance(budgets, list) else [budgets]
    costs = seconds_per_sample if isinstance(seconds_per_sample, list) else [seconds_per_sample]
    costs = costs * len(budgets) if len(costs) == 1 else costs
    sizes = [[] for _ in budgets]
    for budget in budgets:
        budget.start()
    for _ in range(n):
        clock.now += train
        for budget, cost, chosen in zip(budgets, costs, sizes, strict=True):
            size = budget.next_probe_size()
            chosen.append(size)
            if size:
                clock.now += size * cost
                budget.record(size, size * cost)
    return sizes if len(budgets) > 1 else sizes[0]


def test_first_measurement_calibrates_on_a_small_slice_and_the_share_holds(clock):
    budget = CostBudget(max_overhead=0.05, probe_size=64)
    # a whole-probe measurement costs 6.4 s against 10 s of training per epoch
    sizes = run(budget, clock, train=10.0, seconds_per_sample=0.1, n=200)
    assert sizes[0] == MIN_PROBE  # never a whole-probe, unbudgeted first measurement
    assert 0 in sizes and set(sizes) <= {0, 16, 32, 64}
    # the calibration counts: all the monitor spent, the first included, stays within one
    # smallest measurement of its share, and it uses what it has
    run_seconds = budget.clock.run_seconds
    assert run_seconds == pytest.approx(2000.0)
    assert budget.spent_seconds <= 0.05 * run_seconds + MIN_PROBE * 0.1
    assert budget.spent_seconds >= 0.05 * run_seconds - MIN_PROBE * 0.1
    # and it measures often: small slices rather than rare whole probes
    assert sum(size > 0 for size in sizes) >= 50


def test_a_cold_first_cost_is_discounted_until_a_warm_one_is_timed(clock):
    budget = CostBudget(max_overhead=0.05, probe_size=64)
    budget.start()
    clock.now += 10.0
    assert budget.next_probe_size() == MIN_PROBE
    budget.record(MIN_PROBE, 1.6)  # 0.1 s a sample, first (cold) call
    assert budget.predicted(MIN_PROBE) == pytest.approx(1.6 / COLD_FACTOR)
    budget.record(MIN_PROBE, 0.8)  # warm: the prediction is what it costs now
    assert budget.warm and budget.predicted(MIN_PROBE) == pytest.approx(0.8)


def test_halves_to_what_fits_before_skipping(clock):
    budget = CostBudget(max_overhead=0.05, probe_size=64)
    budget.start()
    budget.seconds_per_sample, budget.warm = 0.01, True
    clock.now += 100.0  # 5 s earned
    assert budget.next_probe_size() == 64
    budget.record(64, 4.36)  # 0.068 s a sample now; 0.64 s left
    assert budget.next_probe_size() == 0  # 16 samples would take 1.09 s
    clock.now += 10.0  # +0.5 s earned: 1.14 s left
    assert budget.next_probe_size() == 16


def test_monitors_of_one_trainer_share_one_budget_fairly(clock):
    clock_ = RunClock()
    cheap = CostBudget(max_overhead=0.05, probe_size=64, name="cheap", clock=clock_)
    costly = CostBudget(max_overhead=0.10, probe_size=64, name="costly", clock=clock_)
    assert clock_.max_overhead == 0.05  # the smallest wins
    sizes = run([cheap, costly], clock, train=10.0, seconds_per_sample=[0.01, 0.1], n=300)
    run_seconds = clock_.run_seconds
    total = cheap.spent_seconds + costly.spent_seconds
    # together within the one budget (plus one smallest measurement each), each within its half
    assert total <= 0.05 * run_seconds + MIN_PROBE * (0.01 + 0.1)
    for budget, cost in ((cheap, 0.01), (costly, 0.1)):
        assert budget.spent_seconds <= 0.025 * run_seconds + MIN_PROBE * cost
    # the costly one is not starved by the cheap one, which measures first every epoch
    assert sum(size > 0 for size in sizes[1]) >= 20


def test_infinite_overhead_measures_every_time_and_resume_keeps_the_books(clock):
    free = CostBudget(max_overhead=math.inf, probe_size=32)
    assert run(free, clock, train=0.001, seconds_per_sample=10.0, n=5) == [32] * 5

    budget = CostBudget(max_overhead=0.05, probe_size=64)
    run(budget, clock, train=10.0, seconds_per_sample=0.1, n=3)
    restored = CostBudget(max_overhead=0.05, probe_size=64)
    restored.load_state_dict(budget.state_dict())
    assert restored.state_dict() == budget.state_dict()
    assert restored.seconds_per_sample == pytest.approx(0.1)
    assert restored.clock.allowance(restored.name) == pytest.approx(
        budget.clock.allowance(budget.name)
    )


def test_work_outside_measurements_is_charged_without_changing_the_prediction(clock):
    budget = CostBudget(max_overhead=0.05, probe_size=64)
    budget.start()
    budget.seconds_per_sample, budget.warm = 0.01, True
    budget.charge(1.0)  # the probe's checks at train start
    clock.now += 30.0  # 1.5 s earned, 1.0 s spent: 0.5 s left
    assert budget.seconds_per_sample == 0.01
    assert budget.clock.allowance(budget.name) == pytest.approx(0.5)
    assert budget.next_probe_size() == 32  # 0.64 s for 64 does not fit, 0.32 s for 32 does
