"""Importance-sampled log-likelihood against closed forms of a linear Gaussian VAE, and the
decoder likelihoods against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from torch.distributions import Independent, Laplace, MultivariateNormal, Normal

from lightning_memwatch.functional import (
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
    importance_log_likelihood,
    posterior_from_encoder,
)
from lightning_memwatch.functional.decoder_likelihood import (
    finite_range,
    looks_like_probabilities,
)
from lightning_memwatch.functional.likelihood import as_posterior
from tests.conftest import TanhMLP

M, N_OUT, SIGMA = 3, 6, 0.5


class LinearGaussianVAE:
    """``x = W z + b + sigma * noise``, ``z ~ N(0, tau^2 I)``: everything in closed form.

    Marginal ``p(x) = N(x; b, tau^2 W W^T + sigma^2 I)``; exact posterior
    ``N(mu, S)`` with ``S = (I / tau^2 + W^T W / sigma^2)^-1``, ``mu = S W^T (x - b) / sigma^2``.
    """

    def __init__(self, rng: np.random.Generator, tau: float = 1.0) -> None:
        self.w = rng.standard_normal((N_OUT, M))
        self.b = rng.standard_normal(N_OUT)
        self.tau = tau
        self.cov_post = np.linalg.inv(np.eye(M) / tau**2 + self.w.T @ self.w / SIGMA**2)
        self.cov_x = tau**2 * self.w @ self.w.T + SIGMA**2 * np.eye(N_OUT)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        z = self.tau * rng.standard_normal((count, M))
        return z @ self.w.T + self.b + SIGMA * rng.standard_normal((count, N_OUT))

    def log_px(self, x: np.ndarray) -> np.ndarray:
        return stats.multivariate_normal(self.b, self.cov_x).logpdf(x)

    def post_mean(self, x: np.ndarray) -> np.ndarray:
        return (x - self.b) @ self.w @ self.cov_post.T / SIGMA**2

    def decoder(self, dtype: torch.dtype):
        w, b = torch.tensor(self.w, dtype=dtype), torch.tensor(self.b, dtype=dtype)
        return lambda z: z @ w.T + b

    def posterior(self, dtype: torch.dtype, shift: float = 0.0, widen: float = 1.0):
        """The exact posterior; ``shift`` moves its mean by that many posterior standard
        deviations per coordinate and ``widen`` scales its Cholesky factor."""
        tril = torch.tensor(widen * np.linalg.cholesky(self.cov_post), dtype=dtype)
        offset = torch.tensor(shift * np.sqrt(np.diag(self.cov_post)), dtype=dtype)

        def posterior(x: torch.Tensor) -> MultivariateNormal:
            mu = torch.tensor(self.post_mean(x.double().numpy()), dtype=dtype) + offset
            return MultivariateNormal(mu, scale_tril=tril.expand(len(x), M, M))

        return posterior

    def kl_to_posterior(self, shift: float, widen: float) -> float:
        """``KL(q || p(z|x))`` for ``q = N(mu + delta, widen^2 S)``: the N = 1 bias."""
        delta = shift * np.sqrt(np.diag(self.cov_post))
        inv = np.linalg.inv(self.cov_post)
        return 0.5 * (M * widen**2 - M + delta @ inv @ delta - 2 * M * math.log(widen))


@pytest.fixture
def vae(rng) -> LinearGaussianVAE:
    return LinearGaussianVAE(rng)


def estimate(vae, x, num_samples, seed=0, dtype=torch.float64, **posterior_kwargs):
    return importance_log_likelihood(
        torch.tensor(x, dtype=dtype),
        vae.posterior(dtype, **posterior_kwargs),
        gaussian_log_likelihood(vae.decoder(dtype), SIGMA),
        num_samples=num_samples,
        generator=torch.Generator().manual_seed(seed),
    ).numpy()


def test_exact_posterior_gives_the_exact_log_likelihood_for_every_sample(vae, rng):
    """With q = p(z|x) every weight p(x|z) p(z) / q(z|x) equals p(x): exact at any N."""
    x = vae.sample(20, rng)
    truth = vae.log_px(x)
    np.testing.assert_allclose(estimate(vae, x, num_samples=3), truth, rtol=0, atol=1e-9)
    # float32, N = 1000 (the target: within 0.05 nats)
    got32 = estimate(vae, x, num_samples=1000, dtype=torch.float32)
    np.testing.assert_allclose(got32, truth, rtol=0, atol=0.05)
    assert np.abs(got32 - truth).max() < 1e-3  # in fact float32 rounding only


def test_custom_prior_is_used(rng):
    vae = LinearGaussianVAE(rng, tau=2.0)
    x = vae.sample(10, rng)
    got = importance_log_likelihood(
        torch.tensor(x),
        vae.posterior(torch.float64),
        gaussian_log_likelihood(vae.decoder(torch.float64), SIGMA),
        prior=Independent(Normal(torch.zeros(M, dtype=torch.float64), 2.0), 1),
        num_samples=5,
    ).numpy()
    np.testing.assert_allclose(got, vae.log_px(x), rtol=0, atol=1e-9)


def test_worse_encoder_mean_of_weights_is_unbiased_and_n1_bias_is_the_kl(vae, rng):
    """q = N(mu + 0.7 sd, 1.4^2 S): E_q[w] = p(x) exactly, so exp(estimate) is unbiased; at
    N = 1 the estimate is log w, whose mean is log p(x) - KL(q || p(z|x)) (the ELBO)."""
    shift, widen, repeats = 0.7, 1.4, 4000
    x = np.repeat(vae.sample(1, rng), repeats, axis=0)  # one point, independent repeats
    truth = float(vae.log_px(x[:1]))
    kl = vae.kl_to_posterior(shift, widen)
    assert kl > 0.2  # a bias that a wrong estimator cannot hide in the noise

    ratio = np.exp(estimate(vae, x, num_samples=4, shift=shift, widen=widen) - truth)
    stderr = ratio.std(ddof=1) / math.sqrt(repeats)
    assert abs(ratio.mean() - 1.0) < 4 * stderr
    assert stderr < 0.02

    log_w = estimate(vae, x, num_samples=1, seed=1, shift=shift, widen=widen)
    stderr = log_w.std(ddof=1) / math.sqrt(repeats)
    assert abs(log_w.mean() - (truth - kl)) < 4 * stderr


def test_worse_encoder_bias_is_negative_and_shrinks_with_n(vae, rng):
    """Jensen: E[log p_hat] <= log p(x), the gap shrinking as N grows (the estimator is
    consistent); each comparison is made several standard errors wide."""
    shift, widen, repeats = 0.7, 1.4, 300
    x = np.repeat(vae.sample(1, rng), repeats, axis=0)
    truth = float(vae.log_px(x[:1]))
    bias, stderr = {}, {}
    for n in (1, 10, 1000):
        error = estimate(vae, x, num_samples=n, seed=n, shift=shift, widen=widen) - truth
        bias[n], stderr[n] = error.mean(), error.std(ddof=1) / math.sqrt(repeats)
    assert abs(bias[1] + vae.kl_to_posterior(shift, widen)) < 4 * stderr[1]
    assert bias[1] + 4 * stderr[1] < bias[10] < -3 * stderr[10]
    assert abs(bias[1000]) < 4 * stderr[1000] < abs(bias[10]) / 5


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunking_and_generator_make_the_result_reproducible(tanh_mlp, chunk_size):
    torch.manual_seed(3)
    x = torch.rand(9, 12)
    encoder = TanhMLP(m=12, n=10)
    posterior = posterior_from_encoder(lambda x: encoder(x).chunk(2, dim=1))  # (mean, log_var)
    lik = gaussian_log_likelihood(tanh_mlp, 0.3)
    state = torch.get_rng_state()

    def run(chunk):
        generator = torch.Generator().manual_seed(11)
        return importance_log_likelihood(
            x, posterior, lik, num_samples=20, chunk_size=chunk, generator=generator
        )

    whole, chunked = run(None), run(chunk_size)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    assert torch.isfinite(whole).all()
    other = importance_log_likelihood(
        x, posterior, lik, num_samples=20, generator=torch.Generator().manual_seed(12)
    )
    assert not torch.equal(other, whole)  # the generator, not a constant, drew the samples


def test_a_shard_of_the_drawn_samples_equals_the_whole_and_an_empty_one_is_empty(tanh_mlp):
    """What a DDP rank computes (its rows of the probe and of the latents drawn for the whole
    probe) is its rows of the one-process estimate; a rank with no row gets an empty result
    (before: torch's ``Independent.log_prob`` failed to reshape 0 rows)."""
    from lightning_memwatch.functional.likelihood import importance_estimate, sample_posterior

    torch.manual_seed(3)
    x = torch.rand(3, 12)
    encoder = TanhMLP(m=12, n=10)
    posterior = posterior_from_encoder(lambda x: encoder(x).chunk(2, dim=1))
    lik = gaussian_log_likelihood(tanh_mlp, 0.3)
    with torch.no_grad():
        z = sample_posterior(posterior(x), 16, generator=torch.Generator().manual_seed(5))
        whole = importance_estimate(x, posterior(x), z, lik)
        for rank in range(5):  # 5 ranks for 3 rows: ranks 3 and 4 hold none
            mine = x[rank::5]
            got = importance_estimate(mine, posterior(mine), z[:, rank::5], lik)
            torch.testing.assert_close(got, whole[rank::5], rtol=1e-12, atol=0)
            assert got.dtype == torch.float64 and len(got) == len(mine)


def test_non_gaussian_posterior_with_a_generator_leaves_the_global_rng_alone():
    """A Laplace posterior is sampled inside a forked RNG seeded from the generator; the
    estimate is still exact-in-expectation: here p(x) for x = z + N(0, 1), z ~ N(0, 1)."""
    x = torch.tensor([[0.3], [-1.0]], dtype=torch.float64)

    def posterior(x):
        return Independent(Laplace(x / 2, 0.6 * torch.ones_like(x)), 1)

    lik = gaussian_log_likelihood(lambda z: z, 1.0)
    state = torch.get_rng_state()
    runs = [
        importance_log_likelihood(
            x, posterior, lik, num_samples=20000, generator=torch.Generator().manual_seed(5)
        )
        for _ in range(2)
    ]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(runs[0], runs[1])
    truth = stats.norm(0, math.sqrt(2)).logpdf(x.numpy()[:, 0])
    np.testing.assert_allclose(runs[0].numpy(), truth, atol=0.01)


def test_normal_with_batch_of_independent_scalars_equals_independent(vae, rng):
    x = torch.tensor(vae.sample(5, rng))
    lik = gaussian_log_likelihood(vae.decoder(torch.float64), SIGMA)
    mean, sd = torch.zeros(5, M, dtype=torch.float64), torch.ones(5, M, dtype=torch.float64)
    results = [
        importance_log_likelihood(
            x, lambda x, d=dist: d, lik, num_samples=50, generator=torch.Generator().manual_seed(0)
        )
        for dist in (Normal(mean, sd), Independent(Normal(mean, sd), 1))
    ]
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-12)


def test_nan_rows_are_nan_and_the_others_are_unaffected(vae, rng):
    clean_x = torch.tensor(vae.sample(4, rng))
    x = clean_x.clone()
    x[2] = torch.nan
    posterior = posterior_from_encoder(lambda x: (x[:, :M] * 0.1, torch.zeros(len(x), M)))
    lik = gaussian_log_likelihood(vae.decoder(torch.float64), SIGMA)
    got = importance_log_likelihood(x, posterior, lik, generator=torch.Generator())
    assert torch.isnan(got[2]) and torch.isfinite(got[[0, 1, 3]]).all()
    clean = importance_log_likelihood(clean_x, posterior, lik, generator=torch.Generator())[
        [0, 1, 3]
    ]
    torch.testing.assert_close(got[[0, 1, 3]], clean, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ decoder likelihoods
def test_bernoulli_logits_against_scipy(tanh_mlp):
    torch.manual_seed(1)
    z, x = torch.randn(7, 5), torch.rand(7, 12)
    x[:, :4] = x[:, :4].round()  # binary and grey values
    logits = tanh_mlp(z).detach().double().numpy() * 4
    xs = x.double().numpy()
    ref = (xs * special.log_expit(logits) + (1 - xs) * special.log_expit(-logits)).sum(1)
    with torch.no_grad():
        got = bernoulli_log_likelihood(lambda z: tanh_mlp(z) * 4)(x, z).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # binary x: the Bernoulli pmf itself
    binary = x.round()
    pmf = stats.bernoulli(special.expit(logits)).logpmf(binary.numpy()).sum(1)
    with torch.no_grad():
        got = bernoulli_log_likelihood(lambda z: tanh_mlp(z) * 4)(binary, z).numpy()
    np.testing.assert_allclose(got, pmf, rtol=1e-10)


def test_bernoulli_probabilities_against_numpy_with_clamp():
    probs = torch.tensor([[0.2, 0.9, 0.0], [1.0, 0.5, 0.5]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.25, 1.0], [1.0, 0.0, 1.0]])
    got = bernoulli_log_likelihood(lambda z: probs, logits=False)(x, torch.zeros(2, 1))
    p, xs = probs.numpy(), x.double().numpy()
    with np.errstate(divide="ignore"):
        terms = xs * np.maximum(np.log(p), -100) + (1 - xs) * np.maximum(np.log1p(-p), -100)
    np.testing.assert_allclose(got.numpy(), terms.sum(1), rtol=1e-12)
    assert got[0] < -100  # log 0 clamped at -100, finite


def test_bernoulli_rejects_inputs_outside_the_unit_interval():
    lik = bernoulli_log_likelihood(lambda z: z)
    with pytest.raises(ValueError, match=r"x` in \[0, 1\].*Gaussian likelihood"):
        lik(torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2))


def test_bernoulli_probabilities_reject_outputs_outside_the_unit_interval():
    lik = bernoulli_log_likelihood(lambda z: z, logits=False)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*\[-0.25, 0.5\].*logits=True"):
        lik(torch.tensor([[1.0, 0.0]]), torch.tensor([[-0.25, 0.5]]))
    # NaN outputs are not a range error: they give a NaN likelihood
    assert lik(torch.tensor([[1.0, 0.0]]), torch.tensor([[float("nan"), 0.5]])).isnan().all()


@pytest.mark.parametrize("factory", [bernoulli_log_likelihood, gaussian_log_likelihood])
def test_a_decoder_that_returns_no_tensor_is_rejected(factory):
    lik = (
        factory(lambda z: (z,))
        if factory is bernoulli_log_likelihood
        else factory(lambda z: (z,), 1.0)
    )
    with pytest.raises(ValueError, match=r"decoder to return a tensor.*got tuple"):
        lik(torch.zeros(2, 3), torch.zeros(2, 3))


def _looks_like_probabilities_reference(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.min() < 0 or finite.max() > 1:
        return False
    return bool(((finite > 0) & (finite < 1)).any())


def test_looks_like_probabilities_against_a_numpy_rule():
    torch.manual_seed(3)
    logits = torch.randn(16, 64) * 3
    cases = {
        "sigmoid": (torch.sigmoid(logits), True),
        "logits": (logits, False),
        "positive logits above 1": (logits.abs() + 0.5, False),
        "zero-initialised last layer": (torch.zeros(4, 64), False),
        "saturated 0 / 1 only": ((logits > 0).float(), False),
        "constant sigmoid(0)": (torch.full((4, 64), 0.5), True),
        "sigmoid with a NaN": (
            torch.sigmoid(logits).index_fill(1, torch.tensor([3]), math.nan),
            True,
        ),
        "all NaN": (torch.full((2, 3), math.nan), False),
        "just above 1": (torch.tensor([0.2, 1.0 + 1e-6]), False),
        "just below 0": (torch.tensor([-1e-6, 0.2]), False),
    }
    for name, (values, expected) in cases.items():
        assert _looks_like_probabilities_reference(values.double().numpy()) == expected, name
        assert looks_like_probabilities(values) == expected, name


def test_finite_range_against_numpy():
    values = torch.tensor([[0.3, math.nan, -2.5], [math.inf, 7.0, -math.inf]])
    assert finite_range(values) == (np.nanmin([0.3, -2.5, 7.0]), np.nanmax([0.3, -2.5, 7.0]))
    assert finite_range(torch.full((2,), math.nan)) is None


def test_gaussian_against_scipy(conv_decoder):
    torch.manual_seed(2)
    z, x = torch.randn(4, 6), torch.randn(4, 1, 8, 8)
    mean = conv_decoder(z).detach().double().numpy().reshape(4, -1)
    ref = stats.norm(mean, 0.7).logpdf(x.double().numpy().reshape(4, -1)).sum(1)
    got = gaussian_log_likelihood(conv_decoder, 0.7)(x, z)
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-10)


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"prior": "normal"}, "prior"),
    ],
)
def test_bad_arguments(vae, kwargs, match):
    with pytest.raises(ValueError, match=match):
        importance_log_likelihood(
            torch.zeros(2, N_OUT),
            vae.posterior(torch.float32),
            gaussian_log_likelihood(vae.decoder(torch.float32), SIGMA),
            **kwargs,
        )


def test_deterministic_encoder_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match=r"Distribution.*\(mean, log_var\).*probabilistic"):
        as_posterior(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="posterior_from_encoder"):
        importance_log_likelihood(torch.zeros(2, 3), lambda x: x, lambda x, z: z.sum(1))


def test_log_likelihood_of_the_wrong_shape_is_rejected(vae):
    with pytest.raises(ValueError, match=r"one value per row.*sum log p\(x\|z\)"):
        importance_log_likelihood(
            torch.zeros(2, N_OUT), vae.posterior(torch.float32), lambda x, z: x, num_samples=3
        )


def test_wrong_output_size_and_scale():
    with pytest.raises(ValueError, match="4 elements per sample"):
        gaussian_log_likelihood(lambda z: z, 1.0)(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="scale"):
        gaussian_log_likelihood(lambda z: z, 0.0)
