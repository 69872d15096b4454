"""K-fold memorization scores on a model whose every number has a closed form."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from scipy import special, stats
from torch import nn
from torch.utils.data import TensorDataset

from lightning_memwatch import kfold_memorization_scores
from lightning_memwatch.kfold import log_mean_exp

SIGMA = 0.8


class FoldMean(L.LightningModule):
    """``p(x) = N(x; mu, SIGMA^2 I)`` with ``mu`` the mean of its training fold.

    One full-batch SGD step of rate 1 on ``0.5 mean_b ||x_b - mu||^2`` (gradient
    ``mu - mean(x)``) lands exactly on the fold mean. The decoder ignores ``z`` and the encoder
    returns the prior ``N(0, 1)``, so every importance weight is ``p(x)``: the estimate is exact.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(dim))

    def encode(self, x):
        return torch.zeros(len(x), 1), torch.zeros(len(x), 1)  # (mean, log_var) of N(0, 1)

    def decoder(self, z):
        return self.mu.expand(len(z), -1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return 0.5 * (x - self.mu).square().sum(1).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def run(x, k, repeats, **kwargs):
    return kfold_memorization_scores(
        lambda: FoldMean(x.shape[1]),
        TensorDataset(x),
        k=k,
        repeats=repeats,
        encoder="encode",
        likelihood="gaussian",
        scale=SIGMA,
        num_samples=4,
        batch_size=len(x),
        trainer_kwargs={"max_epochs": 1, "accelerator": "cpu"},
        **kwargs,
    )


def test_scores_equal_the_closed_form_of_fold_mean_models():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((13, 3))
    x[5] += 6.0  # an outlier pulls the mean of every fold that trains on it
    result = run(torch.tensor(x, dtype=torch.float32), k=3, repeats=2)

    folds = result.folds.numpy()
    assert folds.shape == (2, 13)
    for row in folds:  # a partition into 3 folds of sizes 5, 4, 4
        assert sorted(np.bincount(row, minlength=3)) == [4, 4, 5]
    assert not np.array_equal(folds[0], folds[1])  # each repeat reshuffles

    x32 = x.astype(np.float32).astype(np.float64)
    ref = np.empty((2, 3, 13))
    for r in range(2):
        for f in range(3):
            mu = x32[folds[r] != f].mean(0)
            ref[r, f] = stats.norm(mu, SIGMA).logpdf(x32).sum(1)
    np.testing.assert_allclose(result.log_px.numpy(), ref, rtol=0, atol=1e-4)

    held_in = folds[:, None, :] != np.arange(3)[None, :, None]
    flat, mask = ref.reshape(6, 13), held_in.reshape(6, 13)
    log_in = np.array([special.logsumexp(flat[mask[:, i], i]) - np.log(4) for i in range(13)])
    log_out = np.array([special.logsumexp(flat[~mask[:, i], i]) - np.log(2) for i in range(13)])
    np.testing.assert_allclose(result.log_px_in.numpy(), log_in, atol=1e-4)
    np.testing.assert_allclose(result.log_px_out.numpy(), log_out, atol=1e-4)
    np.testing.assert_allclose(result.scores.numpy(), log_in - log_out, atol=1e-4)
    assert result.most_memorized(1).item() == 5
    assert result.scores[5] > 5 * result.scores.median()


def test_log_mean_exp_drops_non_finite_values_and_masked_ones():
    values = torch.tensor([[0.0, 1.0], [np.log(3.0), np.nan], [5.0, -np.inf]])
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    got = log_mean_exp(values, mask)
    assert got[0].item() == pytest.approx(np.log(2.0))  # mean of 1 and 3
    assert torch.isnan(got[1])  # nothing finite left


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 1}, "`k`"),
        ({"k": 20}, r"at most the dataset's size \(13\)"),
        ({"repeats": 0}, "repeats"),
        ({"likelihood": "gaussian", "scale": -1.0}, "scale"),
    ],
)
def test_bad_arguments(kwargs, match):
    x = torch.zeros(13, 2)
    options = {"encoder": "encode", "likelihood": "gaussian", **kwargs}
    with pytest.raises(ValueError, match=match):
        kfold_memorization_scores(lambda: FoldMean(2), TensorDataset(x), **options)


def test_build_module_must_return_a_lightning_module():
    with pytest.raises(ValueError, match="LightningModule"):
        kfold_memorization_scores(lambda: nn.Linear(2, 2), TensorDataset(torch.zeros(4, 2)), k=2)


class FoldFrequency(L.LightningModule):
    """Bernoulli ``p(x) = prod_j p_j^x_j (1 - p_j)^(1 - x_j)`` with ``p = (1 + 2 f) / 4``, ``f``
    the training fold's pixel frequencies (one full-batch SGD step of rate 1 on
    ``0.5 mean_b ||(1 + 2 x_b) / 4 - p||^2``), so ``p`` lies in ``[1/4, 3/4]``.

    The samples are ``uint8`` images in ``{0, 255}``; ``prepare`` turns a collated batch into
    the ``[0, 1]`` floats the model computes on, as a module's ``_prepare_batch`` does.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((dim,), 0.5))

    def prepare(self, batch):
        return batch[0].float() / 255

    def encode(self, x):
        return torch.zeros(len(x), 1), torch.zeros(len(x), 1)

    def decoder(self, z):
        return self.p.expand(len(z), -1)  # probabilities, strictly inside [0, 1]

    def training_step(self, batch, batch_idx):
        x = self.prepare(batch)
        return 0.5 * ((1 + 2 * x) / 4 - self.p).square().sum(1).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def test_auto_likelihood_and_preprocess_give_the_bernoulli_closed_form():
    rng = np.random.default_rng(1)
    bits = (rng.random((12, 5)) < 0.5).astype(np.float64)
    images = torch.tensor(bits * 255, dtype=torch.uint8)
    result = kfold_memorization_scores(
        lambda: FoldFrequency(5),
        TensorDataset(images),
        k=2,
        encoder="encode",
        preprocess="prepare",
        num_samples=2,
        batch_size=12,
        trainer_kwargs={"max_epochs": 1, "accelerator": "cpu"},
    )
    folds = result.folds.numpy()[0]
    for f in range(2):
        p = (1 + 2 * bits[folds != f].mean(0)) / 4
        ref = (bits * np.log(p) + (1 - bits) * np.log1p(-p)).sum(1)
        np.testing.assert_allclose(result.log_px[0, f].numpy(), ref, rtol=0, atol=1e-4)


def test_integer_samples_without_preprocess_fail_with_the_fix():
    images = torch.zeros(6, 5, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"floating-point.*`preprocess=`"):
        kfold_memorization_scores(
            lambda: FoldFrequency(5),
            TensorDataset(images),
            k=2,
            encoder="encode",
            batch_size=6,
            trainer_kwargs={"max_epochs": 1, "accelerator": "cpu"},
        )
