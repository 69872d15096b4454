"""The detection benchmark's statistics and ground truths against independent references: the
Clopper-Pearson bounds against the binomial tail and its closed forms, the split-half threshold
and the time to detection on synthetic runs with a known answer, the ground truths against
numpy loops on constructed cases."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def bench(benchmarks_path):
    names = ("detection_stats", "detection_split", "detection_truth", "detection_classes")
    return {name.split("_")[1]: importlib.import_module(name) for name in names}


def _binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize("n", [1, 5, 12, 30, 60])
def test_clopper_pearson_closed_forms(bench, n):
    stats = bench["stats"]
    assert stats.upper_bound(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-10)
    assert stats.lower_bound(n, n) == pytest.approx(0.05 ** (1 / n), rel=1e-10)
    assert stats.upper_bound(n, n) == 1.0 and stats.lower_bound(0, n) == 0.0
    if n > 1:  # Beta(2, 1) has CDF p^2: one event in two runs
        assert stats.upper_bound(1, 2) == pytest.approx(math.sqrt(0.95), rel=1e-10)


@pytest.mark.parametrize(("k", "n"), [(1, 12), (3, 30), (2, 60), (7, 12)])
def test_clopper_pearson_solves_the_binomial_tail(bench, k, n):
    """The upper bound p has P(X <= k) = 5 % under Binomial(n, p); the lower, P(X >= k) = 5 %."""
    stats = bench["stats"]
    assert _binomial_cdf(k, n, stats.upper_bound(k, n)) == pytest.approx(0.05, abs=1e-9)
    assert 1 - _binomial_cdf(k - 1, n, stats.lower_bound(k, n)) == pytest.approx(0.05, abs=1e-9)


def test_choose_threshold_prefers_no_alarm_then_detection_then_the_middle(bench):
    stats = bench["stats"]
    c = stats.Counts
    grid = [0.1, 0.2, 0.3, 0.4, 0.5]
    counts = [c(6, 6, 3, 6), c(6, 6, 0, 6), c(6, 6, 0, 6), c(6, 6, 0, 6), c(2, 6, 0, 6)]
    assert stats.choose_threshold(grid, counts) == 0.3
    # no threshold without an alarm: the fewest alarms, then the most detections
    counts = [c(6, 6, 3, 6), c(5, 6, 1, 6), c(4, 6, 1, 6), c(2, 6, 2, 6), c(1, 6, 2, 6)]
    assert stats.choose_threshold(grid, counts) == 0.2
    assert stats.choose_threshold(grid, counts, max_alarms=0.5) == 0.1
    with pytest.raises(ValueError, match="one count per threshold"):
        stats.choose_threshold(grid, counts[:2])


def _synthetic_runs():
    """Seeds 0-3 of a class 'a': memorizing runs at x = 0.9 from epoch 3 (copy share 0.15 from
    epoch 2, best validation at epoch 2); generalizing runs at most 0.35 on the even seeds,
    0.65 on seed 1 (an alarm for any t below 0.65), 0.2 on seed 3."""
    runs = []
    for seed in range(4):
        for kind in ("memorize", "generalize"):
            if kind == "memorize":
                values = [0.1, 0.9, 0.9]
            else:
                values = {0: [0.3, 0.35, 0.1], 1: [0.2, 0.65, 0.1], 2: [0.35, 0.2, 0.1]}.get(
                    seed, [0.2, 0.2, 0.2]
                )
            checks = [
                {"epoch": e, "scalars": {"memwatch/x": v}, "samples": {}}
                for e, v in zip((1, 3, 5), values, strict=True)
            ]
            epochs = [
                {
                    "epoch": e,
                    "batches": 100 * (e + 1),
                    "seconds": 10.0 * (e + 1),
                    "val_loss": abs(e - 2) + 1.0,
                    "truth": {"share": 0.15 if e >= 2 and kind == "memorize" else 0.0},
                }
                for e in range(6)
            ]
            runs.append(
                {
                    "model_class": "a",
                    "kind": kind,
                    "seed": seed,
                    "checks": checks,
                    "epochs": epochs,
                    "val_loss": [e["val_loss"] for e in epochs],
                }
            )
    return runs


@pytest.fixture()
def synthetic(bench, monkeypatch):
    rules = importlib.import_module("detection_rules")
    tunable = rules.Tunable(
        "x > t",
        "x",
        lambda t: rules.Rule(f"x > {t:g}", "tuned", rules.scalar_rule("memwatch/x", t, "above")),
        (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
        0.5,
    )
    monkeypatch.setattr(bench["split"], "tunables", lambda: [tunable])
    model_class = bench["classes"].ModelClass(
        "a", {}, None, None, None, truth_key="share", truth_label="", copy_key="share"
    )
    return _synthetic_runs(), {"a": model_class}


def test_split_half_tunes_on_even_seeds_and_reports_the_odd_ones(bench, synthetic):
    runs, classes = synthetic
    text, thresholds = bench["split"].split_table(runs, classes)
    # even seeds: no alarm from t = 0.4 up, all detected to 0.8: the middle of 0.4-0.8
    assert thresholds == {"x > t": 0.6}
    pooled = next(line for line in text.splitlines() if "| pooled (a), t tuned |" in line)
    tuning, evaluation = pooled.split(" | ")[3:5]
    assert tuning == "2/2 (>= 22%), 0/2 (<= 78%)"
    # the odd seeds' alarm is reported: 1 of 2, upper bound sqrt(0.95)
    assert evaluation == "2/2 (>= 22%), 1/2 (<= 97%)"
    alarms = bench["split"].alarms(runs, classes, thresholds)
    assert alarms == [  # at the tuned t, then at the default t (0.5)
        f"- x > {t}: a generalize seed 1 (evaluation half) at epoch 3, share 0 there"
        for t in (0.6, 0.5)
    ]


def test_time_to_detection_against_best_validation_and_copy_step(bench, synthetic):
    runs, classes = synthetic
    text = bench["split"].timing_table(runs, classes, {"x > t": 0.6})
    row = next(line for line in text.splitlines() if line.startswith("| x > 0.6 | tuned t"))
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
    # fires at epoch 3 (step 400, 40 s), best validation at epoch 2 (30 s), copies from
    # epoch 2 (step 300)
    assert cells[2:] == [
        "2/2", "3 [3, 3]", "2 [2, 2]", "+1 [+1, +1]", "40 [40, 40]", "30 [30, 30]",
        "0.15 [0.15, 0.15]", "300 [300, 300]", "+100 [+100, +100]",
    ]  # fmt: skip
    # the default t (0.5) on every seed: the four memorizing runs, fired at epoch 3
    row = next(line for line in text.splitlines() if line.startswith("| x > 0.5 | default t"))
    assert "| a | 4/4 | 3 [3, 3] |" in row


def _loop_nearest(samples, pool):
    return np.array([[np.linalg.norm(s - p) for p in pool] for s in samples])


def test_copy_shares_against_a_numpy_loop(bench):
    rng = np.random.default_rng(0)
    train, held = rng.uniform(0, 1, (20, 64)), rng.uniform(0, 1, (30, 64))
    copies = train[:10] + rng.normal(0, 1e-3, (10, 64))
    between = (train[10:15] + train[15:20]) / 2  # equidistant from two training points
    novel = rng.uniform(0, 1, (10, 64))
    samples = np.concatenate([copies, between, novel])
    got = bench["truth"].copy_shares(*(torch.tensor(a) for a in (samples, train, held)))
    d = _loop_nearest(samples, train)
    first, second = np.sort(d, 1)[:, 0], np.sort(d, 1)[:, 1]
    assert got["copy_share"] == pytest.approx(np.mean(first / second < 1 / 3))
    assert got["copy_share"] == pytest.approx(10 / 25)  # the copies, and only them
    d_h = _loop_nearest(samples, held[:20]).min(1)  # equal-size sets: the first 20 held-out
    assert got["closer_than_heldout"] == pytest.approx(np.mean(first < d_h))
    coverage = _loop_nearest(held, samples).min(1)
    assert got["heldout_distance"] == pytest.approx(np.median(coverage), rel=1e-9)


def test_reconstruction_errors_and_ratio(bench):
    truth = bench["truth"]
    x = torch.rand(300, 1, 8, 8, dtype=torch.float64)
    errors = truth.reconstruction_errors(lambda b: 0.5 * b, x)
    expected = ((0.5 * x.numpy()) ** 2).reshape(300, -1).mean(1)
    np.testing.assert_allclose(errors, expected, rtol=1e-12)
    assert truth.ratio_of_medians(np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0])) == 2.5


def test_recovered_errors_reach_a_linear_decoders_residual(bench):
    """``decoder(z) = A z`` with orthonormal columns: the best error of ``x = A z0 + r`` (``r``
    orthogonal to A's range) is ``|r|^2 / 64``; the decoder's ``.grad`` stays untouched."""
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(64, 64, generator=generator))
    inside, outside = basis[:, :16], basis[:, 16:]
    decoder = torch.nn.Linear(16, 64, bias=False)
    with torch.no_grad():
        decoder.weight.copy_(inside)
    z0 = torch.randn(8, 16, generator=generator)
    residual = 0.1 * torch.randn(8, 48, generator=generator) @ outside.T
    x = z0 @ inside.T + residual
    errors = bench["truth"].recovered_errors(decoder, x, 16, steps=300)
    expected = (residual**2).sum(1).double().numpy() / 64
    np.testing.assert_allclose(errors, expected, rtol=1e-2)
    assert decoder.weight.grad is None


def test_evaluating_restores_every_mode(bench):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model[1].eval()
    seen = bench["truth"].evaluating(model)(lambda: {"training": model[0].training})
    assert seen == {"training": False}
    assert model[0].training and not model[1].training
