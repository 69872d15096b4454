"""The x0-estimate's spectrum on the ideal denoiser of Gaussian data, whose Jacobian is known in
closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_memwatch.functional import random_orthonormal, x0_estimator, x0_singular_values
from tests.conftest import random_orthogonal

PREDICTIONS = ("epsilon", "sample", "v_prediction")


def gaussian_denoiser(mean, cov, abar, prediction):
    """The MMSE denoiser of N(mean, cov) data, in parametrization ``prediction``:
    ``E[x_0 | x_t] = mu + sqrt(a) C (a C + (1 - a) I)^{-1} (x_t - sqrt(a) mu)``."""
    mean_t, cov_t = torch.from_numpy(mean), torch.from_numpy(cov)
    eye = torch.eye(len(mean), dtype=torch.float64)

    def denoiser(x_t, t):
        a = abar[t].to(torch.float64)[:, None, None]
        gain = torch.sqrt(a) * cov_t @ torch.linalg.inv(a * cov_t + (1 - a) * eye)
        centred = (x_t.to(torch.float64) - torch.sqrt(a[:, :, 0]) * mean_t)[:, :, None]
        x0 = mean_t + (gain @ centred)[:, :, 0]
        a1 = a[:, :, 0]
        eps = (x_t - torch.sqrt(a1) * x0) / torch.sqrt(1 - a1)
        out = {
            "epsilon": eps,
            "sample": x0,
            "v_prediction": torch.sqrt(a1) * eps - torch.sqrt(1 - a1) * x0,
        }
        return out[prediction].to(x_t.dtype)

    return denoiser


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_singular_values_of_the_ideal_gaussian_denoiser_are_closed_form(rng, prediction):
    dim = 6
    lam = np.array([4.0, 2.0, 1.0, 0.5, 0.1, 0.01])
    u = random_orthogonal(dim, rng)
    cov, mean = (u * lam) @ u.T, rng.standard_normal(dim)
    abar = torch.from_numpy(np.linspace(0.99, 0.05, 20))
    t = 7
    a = float(abar[t])
    expected = np.sort(np.sqrt(a) * lam / (a * lam + 1 - a))[::-1]
    x_t = torch.from_numpy(rng.standard_normal((5, dim)))
    estimate = x0_estimator(gaussian_denoiser(mean, cov, abar, prediction), t, abar, prediction)
    s = x0_singular_values(estimate, x_t)
    np.testing.assert_allclose(s.numpy(), np.tile(expected, (5, 1)), rtol=1e-8)


def test_a_projection_gives_the_singular_values_of_j_q(rng):
    dim, k = 8, 3
    lam = np.geomspace(5, 0.05, dim)
    u = random_orthogonal(dim, rng)
    cov, mean = (u * lam) @ u.T, np.zeros(dim)
    abar = torch.from_numpy(np.linspace(0.99, 0.05, 20))
    a = float(abar[3])
    jac = np.sqrt(a) * cov @ np.linalg.inv(a * cov + (1 - a) * np.eye(dim))
    q = random_orthonormal(dim, k, torch.Generator().manual_seed(1))
    expected = np.linalg.svd(jac @ q.numpy(), compute_uv=False)
    estimate = x0_estimator(gaussian_denoiser(mean, cov, abar, "epsilon"), 3, abar, "epsilon")
    x_t = torch.from_numpy(rng.standard_normal((4, 1, 2, 4)))  # image-shaped points, D = 8
    s = x0_singular_values(estimate, x_t.reshape(4, -1), projection=q)
    np.testing.assert_allclose(s.numpy(), np.tile(expected, (4, 1)), rtol=1e-8)
    s_images = x0_singular_values(
        lambda x: estimate(x.reshape(4, -1)).reshape(x.shape), x_t, projection=q
    )
    np.testing.assert_allclose(s_images.numpy(), s.numpy(), rtol=1e-12)


def test_random_orthonormal_is_orthonormal_and_seeded():
    q = random_orthonormal(10, 4, torch.Generator().manual_seed(0))
    np.testing.assert_allclose((q.T @ q).numpy(), np.eye(4), atol=1e-12)
    assert torch.equal(q, random_orthonormal(10, 4, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="at most `dim`"):
        random_orthonormal(3, 4)


def test_a_non_finite_estimate_gives_a_nan_row():
    q = random_orthonormal(3, 2, torch.Generator().manual_seed(0))
    estimate = lambda x: torch.where(x[:, :1] > 0, torch.nan, 2 * x)  # noqa: E731
    x_t = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    s = x0_singular_values(estimate, x_t, projection=q)
    assert torch.isnan(s[0]).all() and torch.allclose(
        s[1], torch.full((2,), 2.0, dtype=torch.float64)
    )
    s = x0_singular_values(estimate, x_t)
    assert torch.isnan(s[0]).all() and torch.allclose(
        s[1], torch.full((3,), 2.0, dtype=torch.float64)
    )


def test_a_projection_through_an_op_without_forward_mode_falls_back_to_reverse_mode(rng):
    """``x -> Square(W x)`` (a custom ``autograd.Function`` with a backward only): ``J = diag(2 W
    x) W``, and the singular values of ``J Q`` computed in numpy."""
    import warnings

    from tests.attention_decoders import Square

    dim, k = 6, 2
    w = torch.from_numpy(rng.standard_normal((dim, dim)))
    q = random_orthonormal(dim, k, torch.Generator().manual_seed(2))
    x_t = torch.from_numpy(rng.standard_normal((3, dim)))

    def estimate(x):
        return Square.apply(x @ w.T)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's one notice
        s = x0_singular_values(estimate, x_t, projection=q)
    w_np, q_np = w.numpy(), q.numpy()
    for point, values in zip(x_t.numpy(), s.numpy(), strict=True):
        jac = np.diag(2 * w_np @ point) @ w_np
        np.testing.assert_allclose(values, np.linalg.svd(jac @ q_np, compute_uv=False), rtol=1e-8)
