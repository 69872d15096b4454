"""A measurement's cost predicted before it is paid, against decoders of known cost, and the
budget's decisions with that prediction on a fake clock (no real timing in unit tests)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch._C import _functorch

from lightning_memwatch.callbacks.machinery import costs as costs_module
from lightning_memwatch.callbacks.machinery.budget import MIN_PROBE, UNMEASURED_MARGIN, CostBudget
from lightning_memwatch.callbacks.machinery.clock import RunClock
from lightning_memwatch.callbacks.machinery.costs import (
    UnitCosts,
    Work,
    density_work,
    recovery_work,
    spectrum_work,
    time_units,
)
from lightning_memwatch.callbacks.machinery.latents import LatentStore, recover_rows
from lightning_memwatch.callbacks.machinery.spectra import spectral_head
from lightning_memwatch.functional import decay_terms, dip_terms
from tests.callbacks.test_budget import Clock


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(costs_module.time, "perf_counter", clock)
    return clock


#: Seconds (per call, per latent row) the known-cost decoder charges for each kind of call.
COSTS = {"forward": (1e-3, 1e-4), "jacobian": (5e-3, 2e-3), "gradient": (2e-3, 3e-4)}


class KnownCost(torch.nn.Module):
    """A linear decoder ``R^4 -> R^12`` (singular values 1.3 to 4.1) that advances a fake clock
    by a known amount per call and per latent row, by the kind of call: a forward-mode
    Jacobian (its latents wrapped by ``torch.func``), a forward pass that will be
    differentiated (latents that require grad), or a plain forward pass; and counts them."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        torch.manual_seed(0)
        u, _ = torch.linalg.qr(torch.randn(12, 4))
        v, _ = torch.linalg.qr(torch.randn(4, 4))
        self.register_buffer("matrix", u @ torch.diag(torch.tensor([4.1, 3.0, 2.2, 1.3])) @ v.T)
        self.clock, self.counts = clock, Counter()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if _functorch.is_functorch_wrapped_tensor(z):
            kind = "jacobian"
        else:
            kind = "gradient" if z.requires_grad else "forward"
        per_call, per_row = COSTS[kind]
        self.clock.now += per_call + per_row * z.shape[0]
        self.counts[f"{kind}_calls"] += 1
        self.counts[f"{kind}_rows"] += z.shape[0]
        return z @ self.matrix.T


#: A Jacobian call also runs the decoder on one point to size its chunks.
JACOBIAN_CALL = (COSTS["jacobian"][0] + sum(COSTS["forward"]), COSTS["jacobian"][1])
UNITS_KNOWN = UnitCosts(COSTS["forward"], JACOBIAN_CALL, COSTS["gradient"])


def test_timed_units_are_the_known_costs(clock):
    decoder = KnownCost(clock)
    units = time_units(decoder, torch.randn(16, 4), forward_mode=True, reverse_mode=True)
    for kind in ("forward", "jacobian", "gradient"):
        assert getattr(units, kind) == pytest.approx(getattr(UNITS_KNOWN, kind), rel=1e-9), kind
    assert units.op == 0.0  # the fake clock does not move outside the decoder


def counted(decoder: KnownCost) -> Work:
    """The calls the decoder saw, as :class:`Work` (a Jacobian's chunk-sizing forward pass of
    one point counted in the Jacobian call, as the timed units count it)."""
    c = decoder.counts
    return Work(
        c["forward_calls"] - c["jacobian_calls"],
        c["forward_rows"] - c["jacobian_calls"],
        c["jacobian_calls"],
        c["jacobian_rows"],
        c["gradient_calls"],
        c["gradient_rows"],
    )


def without_fixed(work: Work) -> Work:
    return Work(**{**vars(work), "fixed_ops": 0.0})


@pytest.mark.parametrize("size", [5, 16])
def test_spectrum_and_density_work_is_counted_exactly(clock, size):
    """The spectrum and density passes GeometryMonitor runs on one slice (both splits, the prior
    draws), on a linear decoder whose decay lines reach both radii in the first segment: the
    decoder calls and rows are the predicted ones, and so are the seconds."""
    decoder = KnownCost(clock)
    generator = torch.Generator().manual_seed(0)
    start = clock.now
    for _ in ("train", "val", "prior"):
        spectral_head(decoder, torch.randn(size, 4, generator=generator), None)
    expected = without_fixed(spectrum_work(size))
    assert counted(decoder) == expected
    assert clock.now - start == pytest.approx(UNITS_KNOWN.seconds(expected), rel=1e-9)
    decoder.counts.clear()
    start = clock.now
    for _ in ("train", "val"):
        z = torch.randn(size, 4, generator=generator)
        ends = torch.randn(size, 4, generator=generator)
        head = spectral_head(lambda w: w @ decoder.matrix.T, z, None)  # the spectrum pass's
        dip_terms(decoder, z, ends, s_start=head[:, :-4])
        decay_terms(decoder, z, radii=(0.5, 1.0), head=head)
    expected = without_fixed(density_work(size, radii=2, segments=1))
    assert counted(decoder) == expected
    assert clock.now - start == pytest.approx(UNITS_KNOWN.seconds(expected), rel=1e-9)


@pytest.mark.parametrize(("steps", "starts"), [(0, 1), (6, 2)])
def test_recovery_work_bounds_the_lbfgs_evaluations(clock, steps, starts):
    """Recovery from ``starts`` starts: with ``steps=0`` exactly one evaluation a start; with
    L-BFGS at least one per iteration plus the first, at most 5/4 per iteration (torch's
    ``max_eval``): the prediction is that bound, on the rows the decoder saw."""
    decoder = KnownCost(clock)
    size = 8
    x = decoder(torch.randn(size, 4)).detach() + 0.1
    decoder.counts.clear()
    store = LatentStore(size)
    rows = torch.arange(size)
    z_encoder = torch.randn(size, 4)
    kept = torch.randn(size, 4)
    if starts == 2:  # a warm visit: the kept latent and the encoder's
        store.put("train", rows, kept, torch.ones(size), epoch=0)
    recover_rows(
        decoder,
        x,
        "train",
        rows,
        store,
        latent_dim=4,
        seed=0,
        epoch=1,
        z_encoder=z_encoder,
        steps=steps,
        warm_steps=steps,
    )
    got, predicted = counted(decoder), recovery_work(size, starts, steps, splits=1)
    assert got.forward_calls == predicted.forward_calls == 1  # the final errors
    if steps == 0:
        assert got.gradient_calls == predicted.gradient_calls == starts
    else:
        assert starts * (steps + 1) <= got.gradient_calls <= predicted.gradient_calls
    assert got.gradient_rows == got.gradient_calls * size


def budget_with(units: UnitCosts, works: dict[str, Work], **kwargs) -> CostBudget:
    budget = CostBudget(max_overhead=0.05, probe_size=64, **kwargs)
    budget.units, budget.families = units, tuple(works)
    budget.work = lambda family, size: works[family] * (size / MIN_PROBE)
    return budget


#: 1 s a slice of 16 for "cheap", 10 s for "dear" (forward passes only, no fixed cost).
UNITS = UnitCosts(forward=(0.0, 1.0))
WORKS = {"cheap": Work(forward_rows=1.0), "dear": Work(forward_rows=10.0)}


@pytest.fixture
def budget_clock(monkeypatch) -> Clock:
    from lightning_memwatch.callbacks.machinery import clock as clock_module

    fake = Clock()
    monkeypatch.setattr(clock_module.time, "perf_counter", fake)
    monkeypatch.setattr(costs_module, "jvp_warm", lambda: True)
    return fake


def test_no_measurement_before_its_predicted_cost_is_earned(budget_clock):
    """Epochs of 1 s, 5 % budget, one monitor: a 16-sample measurement predicted at
    ``1.5 x 1 s`` (not measured yet) waits until epoch 30 has earned it; the books never go
    over the share, the first epoch included."""
    budget = budget_with(UNITS, {"cheap": WORKS["cheap"]})
    budget.start()
    sizes = []
    for epoch in range(120):
        budget_clock.now += 1.0
        budget.clock.progress = (epoch + 1) / 120
        size = budget.next_probe_size()
        sizes.append(size)
        if size:
            cost = size / MIN_PROBE  # the family costs what its count says
            budget.expect(size, ("cheap",))
            budget_clock.now += cost
            budget.record(size, cost, {"cheap": (cost, 0.0, False)})
        assert budget.spent_seconds <= 0.05 * budget.clock.run_seconds + 1e-9, epoch
    first = next(i for i, s in enumerate(sizes) if s)
    assert first == math.ceil(UNMEASURED_MARGIN * 1.0 / 0.05) - 1  # epoch 29: 30 s earned
    assert sizes[first] == MIN_PROBE and budget.factors["cheap"] == pytest.approx(1.0)
    assert budget.never == {}


def test_a_family_never_affordable_in_the_run_is_skipped_and_named(budget_clock):
    """A 40-epoch run of 1 s epochs earns 2 s: the dear family (15 s a slice, not measured yet)
    never fits, the cheap one is measured alone; both facts are in the plan and ``never``."""
    budget = budget_with(UNITS, WORKS)
    budget.start()
    measured = []
    for epoch in range(40):
        budget_clock.now += 1.0
        budget.clock.progress = (epoch + 1) / 40
        if budget.next_probe_size():
            measured.append(budget.plan.families)
            size = budget.plan.size
            cost = size / MIN_PROBE  # what the cheap family's count says
            budget.expect(size, budget.plan.families)
            budget_clock.now += cost
            budget.record(size, cost, {"cheap": (cost, 0.0, False)})
    assert measured and all(families == ("cheap",) for families in measured)
    predicted, earned = budget.never["dear"]
    assert predicted == pytest.approx(UNMEASURED_MARGIN * 10.0)
    assert earned < predicted
    assert "cheap" not in budget.never


def test_a_measurement_dearer_than_predicted_scales_the_next_prediction(budget_clock):
    budget = budget_with(UNITS, {"cheap": WORKS["cheap"]})
    budget.start()
    budget_clock.now += 100.0
    budget.expect(16, ("cheap",))
    budget.record(16, 2.5, {"cheap": (2.0, 0.5, False)})  # 2x its count, 0.5 s of histograms
    assert budget.factors["cheap"] == pytest.approx(2.0)
    assert budget.predict(32, ("cheap",)) == pytest.approx(2.0 * 2 + 0.5)  # no time outside
    # a measurement with figures leaves the factor alone and prices the figures
    budget.expect(16, ("cheap",))
    budget.record(16, 3.5, {"cheap": (2.5, 1.0, True)})
    assert budget.factors["cheap"] == pytest.approx(2.0)
    assert budget.figure_costs["cheap"] == pytest.approx(3.5 - 2.5)
    assert budget.predict(16, ("cheap",), figures=True) == pytest.approx(2.0 + 0.5 + 1.0)


def test_a_family_not_measured_yet_borrows_the_measured_families_factor(budget_clock):
    """The timed calls came out 4x too dear (the machine was loaded when they were timed): the
    measured family's factor is 0.25, and the family not measured yet is predicted with it
    (and the margin) instead of at 4x its cost, which it might never be able to afford."""
    budget = budget_with(UNITS, WORKS)
    budget.expect(16, ("cheap",))
    budget.record(16, 0.25, {"cheap": (0.25, 0.0, False)})
    assert budget.factor("cheap") == pytest.approx(0.25)
    assert budget.factor("dear") == pytest.approx(UNMEASURED_MARGIN * 0.25)
    assert budget.predict(16, ("dear",)) == pytest.approx(UNMEASURED_MARGIN * 0.25 * 10.0)


def test_figures_wait_for_a_measurement_that_affords_them(budget_clock, monkeypatch):
    monkeypatch.setattr("lightning_memwatch.callbacks.machinery.budget.figures_warm", lambda: True)
    budget = budget_with(UNITS, {"cheap": WORKS["cheap"]})
    budget.start()
    budget.factors["cheap"], budget.figure_costs["cheap"] = 1.0, 4.0
    budget.figures_wanted = True
    budget_clock.now += 40.0  # 2 s earned: 32 samples (2 s), not with the figures (+4 s)
    budget.clock.progress = 0.1
    assert budget.next_probe_size() == 32 and not budget.plan.figures
    budget_clock.now += 80.0  # 6 s earned: 32 samples and the figures
    assert budget.next_probe_size() == 32 and budget.plan.figures
    assert budget.plan.predicted == pytest.approx(6.0)


def test_lightning_writing_after_a_measurement_is_charged_beyond_its_usual_length(budget_clock):
    """The window after the monitors' epoch-end hooks: 0.01 s at unmeasured epochs, 0.05 s
    after a measurement that logged 30 keys: 0.04 s charged, split by keys."""
    clock = RunClock()
    clock.start()
    first = CostBudget(0.05, 64, name="a", clock=clock)
    second = CostBudget(0.05, 64, name="b", clock=clock)
    clock.budgets.update(a=first, b=second)
    for _ in range(3):
        clock.open_window()
        budget_clock.now += 0.01
        clock.close_window("validation")
    assert clock.baseline["validation"] == pytest.approx(0.01)
    clock.open_window("a", 10)
    clock.open_window("b", 30)
    budget_clock.now += 0.05
    run = clock.run_seconds
    clock.close_window("validation")
    assert first.spent_seconds == pytest.approx(0.01) and second.spent_seconds == pytest.approx(
        0.03
    )
    assert clock.run_seconds == pytest.approx(run + 0.05 - 0.04)
    assert second.after_seconds == pytest.approx(0.03)


def test_a_monitor_over_its_share_leaves_the_others_only_what_is_left_in_all(budget_clock):
    """Two monitors, 5 % of 100 s: 2.5 s each. One spent 4 s on its train-start checks: the
    other may spend what is left of the 5 s in all (1 s), not its own 2.5 s."""
    clock = RunClock()
    over = CostBudget(0.05, 64, name="over", clock=clock)
    other = CostBudget(0.05, 64, name="other", clock=clock)
    clock.start()
    over.charge(4.0)
    budget_clock.now += 100.0
    assert clock.allowance("other") == pytest.approx(1.0)
    assert clock.allowance("over") == pytest.approx(2.5 - 4.0)
    clock.progress = 0.5  # by the end (200 s): 10 s in all, 6 s left, 5 s its own share
    assert clock.final_allowance("other") == pytest.approx(5.0)
    assert other.spent_seconds == 0.0
