"""Smoke run of the DDPM example (``--fast``), and its independent ground truth against a
brute-force count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.examples.conftest import load_example, scalar_events

ddpm = load_example("ddpm_memorization")


def test_near_copy_share_equals_a_brute_force_count(rng):
    train = rng.random((20, 64))
    samples = np.concatenate(
        [train[:7] + 0.01 * rng.standard_normal((7, 64)), rng.random((13, 64))]
    )
    expected = 0
    for s in samples:
        d = sorted(math.dist(s, t) for t in train)
        expected += d[0] < d[1] / 3
    assert ddpm.near_copy_share(samples, train) == pytest.approx(expected / len(samples))
    assert expected == 7


def test_runs_a_and_b_have_the_same_steps_and_held_out_digits():
    a_train, a_held = ddpm.loaders("A", seed=3)
    b_train, b_held = ddpm.loaders("B", seed=3)
    assert len(a_train) == len(b_train) == ddpm.STEPS_PER_EPOCH
    assert len(a_train.dataset) == 32 and len(b_train.dataset) == 1400
    assert (a_held.dataset.tensors[0] == b_held.dataset.tensors[0]).all()
    pool = b_train.dataset.tensors[0].flatten(1)
    held = a_held.dataset.tensors[0].flatten(1)
    assert not (held[:, None, :] == pool[None]).all(-1).any()  # held out of the pool


def test_fast_run_prints_the_timelines_and_the_table(tmp_path, capsys):
    results = ddpm.main(["--fast", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| step | truth near-copy | loss rel. gap |" in out
    assert "| family / key | A train | A val | A gap | A effect [bounds] |" in out
    for run, result in results.items():
        assert result.n_train == ddpm.TRAIN_SIZES[run]
        assert [step for step, _ in result.truth] == [22, 44]  # every epoch in --fast
        assert all(0.0 <= share <= 1.0 for _, share in result.truth)
        steps = [row["step"] for row in result.logged]
        assert steps == [22, 44]
        measured = [row for row in result.logged if "memwatch/diffusion/loss/train" in row]
        assert measured, "the loss family measured at least once"
        assert all(math.isfinite(row["memwatch/diffusion/loss/effect_upper"]) for row in measured)
        events = scalar_events(result.log_dir)
        assert "memwatch/diffusion/loss/train" in events and "truth/near_copy_share" in events
    assert (tmp_path / "results_seed0.json").exists()
