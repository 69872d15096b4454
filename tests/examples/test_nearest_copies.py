"""The copy check of the GAN examples, on sets whose answer is known by construction."""

from __future__ import annotations

import pytest
import torch

from tests.examples.conftest import load_example

copies = load_example("nearest_copies")


def digits_like(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_exact_copies_of_training_samples_are_all_near_copies():
    train, held = digits_like(10, 0), digits_like(10, 1)
    generated = train[[0, 0, 3, 7]].double() + 1e-4  # float64: the offset is exact
    out = copies.copy_check(generated, train, held)
    assert out["train_nearest"] == 1.0
    assert out["near_copies"] == 1.0
    assert out["copied"] == 3.0  # digits 0, 3 and 7
    assert out["ratio"] < 1e-3
    assert out["distance"] == pytest.approx(8e-4, rel=1e-6)  # |1e-4 * ones(64)|


def test_copies_of_held_out_samples_are_never_train_nearest():
    train, held = digits_like(10, 0), digits_like(10, 1)
    out = copies.copy_check(held + 1e-4, train, held)
    assert out["train_nearest"] == 0.0
    assert out["near_copies"] == 0.0
    assert out["ratio"] > 10


def test_samples_of_the_data_distribution_are_train_nearest_about_half_the_time():
    train, held, generated = digits_like(200, 0), digits_like(200, 1), digits_like(2000, 2)
    out = copies.copy_check(generated, train, held)
    assert 0.45 < out["train_nearest"] < 0.55  # binomial sd ~0.011 at n = 2000
    assert 0.95 < out["ratio"] < 1.05


def test_the_larger_set_is_cut_to_the_smaller_size():
    train, held = digits_like(4, 0), digits_like(50, 1)
    generated = held[10:20]  # copies of held-out digits beyond the first 4
    out = copies.copy_check(generated, train, held)
    assert out["k"] == 4.0
    assert out["train_nearest"] > 0.0  # held[10:20] are not in the cut set


def test_generated_samples_leave_the_mode_and_the_global_rng_alone():
    decoder = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5))
    state = torch.random.get_rng_state()
    first = copies.generated_samples(decoder, 3, n=7)
    assert decoder.training
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, copies.generated_samples(decoder, 3, n=7))
    assert first.shape == (7, 5)
