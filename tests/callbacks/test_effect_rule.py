"""The recommended rule, ``memwatch/recovery/effect_upper < -0.5``, on synthetic per-sample
recovery errors with a known effect: what ``RecoveryGap`` logs, read by the real stopper."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lightning_memwatch.callbacks import MemorizationEarlyStopping
from lightning_memwatch.metrics.recovery import RecoveryGap
from tests.callbacks.test_early_stopping import ScriptedMonitor, TinyModule, loader, make_trainer
from tests.devices import DEVICE, on_device

KEY, THRESHOLD, PROBE, CHECKS = "memwatch/recovery/effect_upper", -0.5, 32, 10


def shift_for(delta: float) -> float:
    """Mean shift of N(mu, 1) against N(0, 1) whose Cliff's delta is ``delta``:
    ``delta = 2 Phi(mu / sqrt 2) - 1``."""
    return math.sqrt(2) * stats.norm.ppf((delta + 1) / 2)


def logged_upper(generator: np.random.Generator, delta: float) -> float:
    """``effect_upper`` that ``RecoveryGap`` computes for one check: log-normal errors, the
    train probe's log-errors shifted so that the true Cliff's delta is ``delta``."""
    metric = RecoveryGap().to(DEVICE)
    train = np.exp(generator.normal(shift_for(delta), 1.0, PROBE))
    val = np.exp(generator.normal(0.0, 1.0, PROBE))
    metric.update(on_device(train), "train")
    metric.update(on_device(val), "val")
    return float(metric.compute()["effect_upper"])


def test_never_fires_when_train_and_val_share_a_distribution():
    """200 runs of 10 checks, train and val errors from one distribution: a run fires when any
    check has ``effect_upper < -0.5``; documented rate <= 5 % of runs, measured 0 (the bound
    passes -0.5 with probability ~1e-5 per check)."""
    generator = np.random.default_rng(11)
    fired = [
        any(logged_upper(generator, 0.0) < THRESHOLD for _ in range(CHECKS)) for _ in range(200)
    ]
    assert np.mean(fired) <= 0.05
    assert sum(fired) == 0


def test_never_fires_on_a_harmless_generalization_gap():
    """A real, small gap (true delta -0.3, what the 1,400-digit runs of the detection benchmark
    show): a KS test rejects it more and more often, the rule stays silent in >= 95 % of runs."""
    generator = np.random.default_rng(12)
    fired = [
        any(logged_upper(generator, -0.3) < THRESHOLD for _ in range(CHECKS)) for _ in range(200)
    ]
    assert np.mean(fired) <= 0.05


@pytest.mark.parametrize("delta", [-0.85, -0.95])
def test_fires_at_a_single_check_for_the_claimed_effect(delta):
    """True delta <= -0.8 (train errors below val in 90 % of pairs or more) is the effect the
    rule claims: one check fires in >= 95 % of draws at a 32 + 32 probe."""
    generator = np.random.default_rng(13)
    hits = [logged_upper(generator, delta) < THRESHOLD for _ in range(400)]
    assert np.mean(hits) >= 0.95


def test_the_stopper_reads_the_rule_directly():
    """``MemorizationEarlyStopping(KEY, -0.5, mode="below")`` stops at the first memorizing
    check of a run whose first checks are null and later ones memorize."""
    generator = np.random.default_rng(14)
    values = [logged_upper(generator, 0.0) for _ in range(3)]
    values += [logged_upper(generator, -0.99) for _ in range(5)]
    stopper = MemorizationEarlyStopping(KEY, THRESHOLD, mode="below")
    trainer = make_trainer([ScriptedMonitor(values, key=KEY), stopper], max_epochs=8)
    trainer.fit(TinyModule(), loader(), loader())
    assert stopper.fired_epoch == 3 and stopper.stopped_epoch == 3
