"""Latent priors against scipy: log-densities (the sphere's area included), draws from a
dedicated generator, the typical-set projection and the search bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from torch import distributions as D

from lightning_memwatch.functional import induced_log_density
from lightning_memwatch.functional.priors import (
    check_prior,
    log_prior,
    log_sphere_area,
    project_to_typical_set,
    sample_prior,
    search_bound,
)
from lightning_memwatch.functional.profiles import line_profile, path_profile
from tests.conftest import linear_map
from tests.devices import DEVICE, rng_states, same_rng_states


def test_check_prior_canonical_forms():
    normal = D.Normal(0.0, 1.0)
    assert check_prior(None) == "normal" and check_prior("normal") == "normal"
    assert check_prior("sphere") == "sphere" and check_prior(normal) is normal


@pytest.mark.parametrize("bad", ["uniform", "Normal", 1.0, torch.zeros(3), ("normal",)])
def test_check_prior_rejects(bad):
    with pytest.raises(ValueError, match="`prior`"):
        check_prior(bad)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 100])
def test_normal_log_prior_and_sphere_area(m, rng):
    """``log N(z; 0, I)`` is scipy's; the sphere's area is checked through the polar split of
    ``N(0, I)``: ``log N(z) = log chi_m(|z|) - (m - 1) log |z| - log |S^{m-1}|`` (the radius is
    chi-distributed and independent of the uniform direction), and against ``m V_m``, ``V_m``
    the unit ball's volume ``pi^{m/2} / Gamma(m/2 + 1)``."""
    z = rng.standard_normal((6, m))
    got = log_prior(torch.tensor(z, device=DEVICE), "normal")
    expected = stats.multivariate_normal(np.zeros(m), np.eye(m)).logpdf(z).reshape(6)
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-12)
    r = np.linalg.norm(z, axis=1)
    polar = stats.chi(m).logpdf(r) - (m - 1) * np.log(r) - log_sphere_area(m)
    np.testing.assert_allclose(polar, expected, rtol=1e-10)
    ball = math.pi ** (m / 2) / special.gamma(m / 2 + 1)
    assert log_sphere_area(m) == pytest.approx(math.log(m * ball), rel=1e-12)
    sphere = log_prior(torch.tensor(z, dtype=torch.float32, device=DEVICE), "sphere")
    assert sphere.dtype == torch.float64
    np.testing.assert_allclose(sphere.cpu().numpy(), -math.log(m * ball), rtol=1e-12)


def test_distribution_log_prior_sums_and_keeps_leading_dims(rng):
    loc, scale = np.array([0.5, -1.0, 2.0]), np.array([0.5, 2.0, 1.5])
    z = rng.standard_normal((4, 5, 3))
    expected = stats.norm(loc, scale).logpdf(z).sum(-1)
    tl, ts = torch.tensor(loc, device=DEVICE), torch.tensor(scale, device=DEVICE)
    for prior in (D.Normal(tl, ts), D.Independent(D.Normal(tl, ts), 1)):
        got = log_prior(torch.tensor(z, device=DEVICE), prior)
        assert got.shape == (4, 5) and got.dtype == torch.float64
        np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="log_prob"):
        log_prior(torch.zeros(2, 3), D.Normal(torch.zeros(2, 1, 3), 1.0))


def test_sample_normal_and_sphere_use_only_the_generator():
    states = rng_states()
    z = sample_prior(None, 5, 3, generator=torch.Generator().manual_seed(3), device=DEVICE)
    expected = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    assert z.device == DEVICE and z.dtype == torch.float32 and torch.equal(z.cpu(), expected)
    on_device = torch.Generator(device=DEVICE).manual_seed(3)
    u = sample_prior("sphere", 5, 3, generator=on_device, dtype=torch.double)
    e64 = torch.randn(
        5,
        3,
        generator=torch.Generator(device=DEVICE).manual_seed(3),
        dtype=torch.float64,
        device=DEVICE,
    )
    assert u.device == DEVICE
    torch.testing.assert_close(u, e64 / e64.norm(dim=1, keepdim=True), rtol=0, atol=1e-15)
    assert same_rng_states(states, rng_states()), "the global RNG streams are untouched"


def _uniforms(n: int, m: int, seed: int) -> np.ndarray:
    u = torch.rand(n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u.clamp(np.finfo(np.float64).tiny, 1 - np.finfo(np.float64).eps).numpy()


@pytest.mark.parametrize("kind", ["normal", "independent", "uniform", "laplace", "scalar"])
def test_sample_by_inverse_cdf_matches_scipy(kind):
    """Inverse-transform draws: ``scipy ppf`` of the generator's uniforms, to float64 rounding;
    and a KS test of 4,000 draws per coordinate against the scipy distribution."""
    loc, scale = np.array([0.5, -1.0, 2.0]), np.array([0.5, 2.0, 1.5])
    tl, ts = torch.tensor(loc, device=DEVICE), torch.tensor(scale, device=DEVICE)
    half, two = torch.tensor(0.5, device=DEVICE), torch.tensor(2.0, device=DEVICE)
    prior, ref = {
        "normal": (D.Normal(tl, ts), stats.norm(loc, scale)),
        "independent": (D.Independent(D.Normal(tl, ts), 1), stats.norm(loc, scale)),
        "uniform": (D.Uniform(tl - ts, tl + ts), stats.uniform(loc - scale, 2 * scale)),
        "laplace": (D.Laplace(tl, ts), stats.laplace(loc, scale)),
        "scalar": (D.Normal(half, two), stats.norm(np.full(3, 0.5), np.full(3, 2.0))),
    }[kind]
    states = rng_states()
    generator = torch.Generator().manual_seed(5)
    z = sample_prior(prior, 7, 3, generator=generator, dtype=torch.double, device=DEVICE)
    assert same_rng_states(states, rng_states()) and z.device == DEVICE
    np.testing.assert_allclose(z.cpu().numpy(), ref.ppf(_uniforms(7, 3, 5)), rtol=1e-10, atol=1e-12)
    many = sample_prior(prior, 4000, 3, generator=torch.Generator().manual_seed(6)).double()
    for j in range(3):
        column = ref.dist(*(np.broadcast_to(a, 3)[j] for a in ref.args))
        assert stats.kstest(many[:, j].numpy(), column.cdf).pvalue > 1e-3


def test_sample_multivariate_normal_is_loc_plus_cholesky_times_noise():
    cov = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    loc = np.array([1.0, -2.0, 0.0])
    prior = D.MultivariateNormal(torch.tensor(loc, device=DEVICE), torch.tensor(cov, device=DEVICE))
    generator = torch.Generator().manual_seed(2)
    z = sample_prior(prior, 6, 3, generator=generator, dtype=torch.double, device=DEVICE)
    eps = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    chol = np.linalg.cholesky(cov)
    np.testing.assert_allclose(z.cpu().numpy(), loc + eps.numpy() @ chol.T, rtol=1e-12)


@pytest.mark.parametrize(
    ("prior", "match"),
    [
        (D.Gamma(torch.ones(3), 1.0), "global RNG"),
        (D.Normal(torch.zeros(4), 1.0), r"R\^3"),
        (D.MultivariateNormal(torch.zeros(2), torch.eye(2)), r"R\^3"),
    ],
)
def test_sample_fails_clearly(prior, match):
    with pytest.raises(ValueError, match=match) as error:
        sample_prior(prior, 2, 3, generator=torch.Generator())
    assert "`prior`" in str(error.value)


@pytest.mark.parametrize("m", [2, 100])
def test_project_normal_clamps_the_norm_into_chi_quantiles(m, rng):
    lo, hi = stats.chi(m).ppf([0.001, 0.999])
    directions = rng.standard_normal((4, m))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    norms = np.array([0.5 * lo, 0.5 * (lo + hi), 2 * hi, 130.0])
    z = torch.tensor(directions * norms[:, None], dtype=torch.float32, device=DEVICE)
    got = project_to_typical_set(z, None)
    assert got.dtype == torch.float32 and got.shape == z.shape and got.device == DEVICE
    expected = directions * np.clip(norms, lo, hi)[:, None]
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-5, atol=1e-6)
    zero = project_to_typical_set(torch.zeros(1, m, dtype=torch.float64, device=DEVICE))
    np.testing.assert_allclose(zero.cpu().numpy(), np.full((1, m), lo / math.sqrt(m)), rtol=1e-12)


def test_project_sphere_and_other_priors(rng):
    z = torch.tensor(rng.standard_normal((5, 4)) * 3, device=DEVICE)
    on_sphere = project_to_typical_set(z, "sphere")
    np.testing.assert_allclose(on_sphere.norm(dim=1).cpu().numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(
        (on_sphere * z.norm(dim=1, keepdim=True)).cpu().numpy(), z.cpu().numpy()
    )
    assert project_to_typical_set(z, D.Laplace(torch.zeros(4, device=DEVICE), 1.0)) is z


def test_search_bound():
    for m in (2, 8, 100):
        assert search_bound(None, m) == pytest.approx(2 * stats.chi(m).ppf(0.999), rel=1e-12)
    assert search_bound("sphere", 7) == 2.0
    wide = D.Normal(torch.zeros(3), torch.tensor([1.0, 3.0, 2.0]))
    assert search_bound(wide, 3) == pytest.approx(3 * search_bound(None, 3), rel=1e-12)
    assert search_bound(D.Cauchy(torch.zeros(3), 1.0), 3) == search_bound(None, 3)


@pytest.mark.parametrize("kind", ["sphere", "laplace"])
def test_induced_log_density_and_profiles_use_the_prior(kind, rng):
    """``lp = log p(z) - psi`` on a linear map (``psi = sum log s`` everywhere) for
    ``induced_log_density`` and for the plotted path and line profiles."""
    s = np.array([3.0, 1.5, 0.5])
    a = torch.tensor(linear_map(10, 3, s, rng))
    on_device = a.to(DEVICE)
    f = lambda z: z @ on_device.T  # noqa: E731
    zeros = torch.zeros(3, dtype=torch.double, device=DEVICE)
    prior = "sphere" if kind == "sphere" else D.Laplace(zeros, 2.0)
    logpdf = (
        (lambda x: np.full(len(x), -np.log(4 * np.pi)))
        if kind == "sphere"
        else (lambda x: stats.laplace(0.0, 2.0).logpdf(x).sum(-1))
    )
    z = rng.standard_normal((5, 3))
    got = induced_log_density(f, torch.tensor(z, device=DEVICE), prior=prior)
    np.testing.assert_allclose(got.cpu().numpy(), logpdf(z) - np.log(s).sum(), rtol=1e-10)
    z0, z1 = torch.tensor(z[0], device=DEVICE), torch.tensor(z[1], device=DEVICE)
    _, lp, points = (t.cpu() for t in path_profile(f, z0, z1, steps=5, prior=prior))
    np.testing.assert_allclose(lp.numpy(), logpdf(points.numpy()) - np.log(s).sum(), rtol=1e-10)
    signed, lp_line = (t.cpu() for t in line_profile(f, z0, half_width=1.0, steps=5, prior=prior))
    v = np.linalg.svd(a.numpy())[2][0]
    on_line = z[0] + (signed.numpy() / s[0])[:, None] * v * np.sign(v[np.abs(v).argmax()])
    np.testing.assert_allclose(lp_line.numpy(), logpdf(on_line) - np.log(s).sum(), rtol=1e-10)
