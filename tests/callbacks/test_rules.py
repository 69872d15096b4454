"""EffectAgreement: the weakest family bound, against numpy, and as the stopper's key."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lightning_memwatch import EffectAgreement, GeometryMonitor, RecoveryMonitor
from lightning_memwatch.callbacks import MemorizationEarlyStopping
from lightning_memwatch.callbacks.rules import agreement_bound
from tests.conftest import digits_loaders, make_autoencoder, quiet_trainer
from tests.devices import on_device

KEY = "memwatch/agreement/bound"


def delong_bounds(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(lower, upper) one-sided 95 % bounds of 2 AUC - 1, DeLong, written out in numpy."""
    psi = (a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])
    auc = stats.mannwhitneyu(a, b, alternative="two-sided").statistic / (len(a) * len(b))
    var = psi.mean(1).var(ddof=1) / len(a) + psi.mean(0).var(ddof=1) / len(b)
    half = stats.norm.ppf(0.95) * 2 * math.sqrt(var)
    delta = 2 * auc - 1
    return max(-1.0, delta - half), min(1.0, delta + half)


def test_agreement_bound_is_the_weakest_signed_bound(rng):
    a1, b1 = rng.normal(-1.0, 1, 30), rng.normal(0, 1, 30)  # family 1: train below val
    a2, b2 = rng.normal(0.4, 1, 25), rng.normal(0, 1, 20)  # family 2: train above val
    expected = min(-delong_bounds(a1, b1)[1], delong_bounds(a2, b2)[0])
    got = agreement_bound([(on_device(a1), b1, -1), (a2, on_device(b2), +1)])
    assert got == pytest.approx(expected, abs=1e-12)
    assert math.isnan(agreement_bound([(a1, np.array([np.nan]), -1), (a2, b2, +1)]))


def test_rejects_bad_families():
    with pytest.raises(ValueError, match="families"):
        EffectAgreement(families=(("recovery", "errors", 0),))


def _fit(callbacks):
    train, val = digits_loaders(64, 64, batch_size=32)
    common = {"encoder": "encode", "probe_size": 16, "max_overhead": math.inf}
    monitors = [GeometryMonitor(**common), RecoveryMonitor(**common, steps=5, restarts=1)]
    trainer = quiet_trainer(callbacks=[*monitors, *callbacks], max_epochs=2)
    trainer.fit(make_autoencoder(), train, val)
    return trainer, monitors


def test_logs_the_bound_of_the_monitors_tables_and_the_stopper_reads_it():
    agreement = EffectAgreement()
    stopper = MemorizationEarlyStopping(KEY, threshold=-2.0, mode="above", report_only=True)
    trainer, (geometry, recovery) = _fit([agreement, stopper])
    columns = [
        (t.column(d, "train"), t.column(d, "val"), -1)
        for t, d in (
            (recovery.tables["recovery"], "errors"),
            (geometry.tables["spectrum"], "log_volume"),
        )
    ]
    assert float(trainer.callback_metrics[KEY]) == pytest.approx(agreement_bound(columns), abs=1e-6)
    assert agreement.last_logged_epoch == 1
    assert stopper.fired_epoch == 0  # every bound is above -2: the rule holds at the first check


def test_fails_at_setup_without_its_monitors():
    train, val = digits_loaders(32, 32, batch_size=32)
    trainer = quiet_trainer(
        callbacks=[EffectAgreement(), GeometryMonitor(encoder="encode", probe_size=8)]
    )
    with pytest.raises(ValueError, match="'recovery'"):
        trainer.fit(make_autoencoder(), train, val)


def test_listed_first_the_stopper_and_the_agreement_move_after_what_they_read():
    """[stopper, agreement, geometry, recovery]: each reader goes after its sources, so the
    stopper reads the bound the agreement logged from the monitors' tables in the same hook."""
    agreement = EffectAgreement()
    stopper = MemorizationEarlyStopping(KEY, threshold=-2.0, mode="above", report_only=True)
    train, val = digits_loaders(64, 64, batch_size=32)
    common = {"encoder": "encode", "probe_size": 16, "max_overhead": math.inf}
    monitors = [GeometryMonitor(**common), RecoveryMonitor(**common, steps=5, restarts=1)]
    trainer = quiet_trainer(callbacks=[stopper, agreement, *monitors], max_epochs=2)
    trainer.fit(make_autoencoder(), train, val)
    order = [c for c in trainer.callbacks if c in (stopper, agreement, *monitors)]
    assert set(order[:2]) == set(monitors) and order[2:] == [agreement, stopper]
    assert agreement.last_logged_epoch == 1 and stopper.fired_epoch == 0


def _draws(generator, delta, n=32):
    shift = math.sqrt(2) * stats.norm.ppf(
        (delta + 1) / 2
    )  # Cliff's delta of N(shift, 1) vs N(0, 1)
    return generator.normal(shift, 1.0, n), generator.normal(0.0, 1.0, n)


def test_agreement_rule_silent_under_one_distribution_and_a_harmless_gap():
    """200 runs of 10 checks at 32 + 32: the rule (bound > 0.3) fires in none when both families
    share one distribution, and in <= 5 % of runs under the harmless gaps of the benchmark's
    1,400-digit runs (recovery delta about -0.3, psi about -0.2)."""
    generator = np.random.default_rng(21)
    for deltas, allowed in (((0.0, 0.0), 0), ((-0.3, -0.2), 10)):
        fired = sum(
            any(
                agreement_bound([(*_draws(generator, d), -1) for d in deltas]) > 0.3
                for _ in range(10)
            )
            for _ in range(200)
        )
        assert fired <= allowed


def test_agreement_rule_fires_when_both_families_show_the_claimed_effect():
    """delta <= -0.85 in both families: one check fires in >= 95 % of 400 draws; one family
    alone at that effect with the other null never does (all must agree)."""
    generator = np.random.default_rng(22)
    both = [
        agreement_bound([(*_draws(generator, -0.85), -1), (*_draws(generator, -0.85), -1)]) > 0.3
        for _ in range(400)
    ]
    one = [
        agreement_bound([(*_draws(generator, -0.85), -1), (*_draws(generator, 0.0), -1)]) > 0.3
        for _ in range(400)
    ]
    assert np.mean(both) >= 0.95 and not any(one)
