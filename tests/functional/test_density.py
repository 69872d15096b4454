"""Induced log-density, dip and decay against closed forms and float64 references built here.

Closed forms use a linear map ``f(z) = A z``, ``A = U diag(s) V^T``: its Jacobian is ``A`` at every
point, so ``psi = sum log s_i`` is a constant and ``lp = log N(z; 0, I) - psi`` differs from the
prior's log-density by that constant; along a latent line the output arclength is proportional
to the latent offset. References for non-linear decoders use central-difference Jacobians in
float64 (``tests.conftest.finite_difference_jacobian``), numpy's SVD and ``np.interp``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import distributions as D

from lightning_memwatch.functional import (
    decay_scores,
    decay_terms,
    dip_scores,
    dip_terms,
    induced_log_density,
    nearest_neighbour_radii,
)
from lightning_memwatch.functional.paths import LATENT_LIMIT
from lightning_memwatch.functional.priors import search_bound
from tests.conftest import finite_difference_jacobian, linear_map, numpy_distinct_radii
from tests.devices import DEVICE, device_copy

LINEAR_CASES = [  # (n, m, singular values)
    (7, 3, [2.0, 1.0, 0.5]),
    (40, 8, [3.0, 2.0, 1.0, 0.5]),  # rank 4 of m = 8
    (5, 5, [1.0, 0.9, 0.8, 0.7, 0.6]),
]


def log_normal(z: np.ndarray) -> np.ndarray:
    """``log N(z; 0, I)`` in float64."""
    return -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * np.log(2 * np.pi)


class Scaled(torch.nn.Module):
    """``scale * module(z)``, as a module so the finite-difference reference can copy it."""

    def __init__(self, module: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.module, self.scale = module, scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * self.module(z)


def reference_lp(module: torch.nn.Module, z: np.ndarray, k: int) -> np.ndarray:
    """``log N(z) - sum_{i<=k} log s_i`` with float64 finite-difference Jacobians."""
    s = np.linalg.svd(finite_difference_jacobian(module, torch.as_tensor(z)), compute_uv=False)
    return log_normal(z) - np.log(s[:, :k]).sum(-1)


def reference_rank(module: torch.nn.Module, z: np.ndarray, rtol: float = 1e-4) -> np.ndarray:
    s = np.linalg.svd(finite_difference_jacobian(module, torch.as_tensor(z)), compute_uv=False)
    return (s > rtol * s[:, :1]).sum(-1)


@pytest.mark.parametrize(("n", "m", "s"), LINEAR_CASES)
@pytest.mark.parametrize("k", [None, 2, "per-row"])
def test_induced_log_density_linear_map(n, m, s, k, rng):
    """``lp = log N(z; 0, I) - sum_{i <= k} log s_i`` (Feiszli (2017), eq. 2); ``k = None``: all
    of s."""
    s = np.array(s)
    a = torch.tensor(linear_map(n, m, s, rng), device=DEVICE)
    z = rng.standard_normal((5, m))
    ks = {None: np.full(5, len(s)), 2: np.full(5, 2), "per-row": np.arange(5) % len(s)}[k]
    k_arg = torch.tensor(ks, device=DEVICE) if k == "per-row" else k
    got = induced_log_density(lambda x: x @ a.T, torch.tensor(z, device=DEVICE), k=k_arg)
    psi = np.array([np.log(s[:ki]).sum() for ki in ks])
    assert got.dtype == torch.float64 and got.device == DEVICE
    np.testing.assert_allclose(got.cpu().numpy(), log_normal(z) - psi, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["mvn", "independent", "elementwise"])
def test_induced_log_density_with_a_prior(kind, rng):
    """A non-standard prior: ``lp = log p(z) - psi``; ``(B, m)`` log-probs are summed."""
    s = np.array([2.5, 1.0, 0.3])
    a = torch.tensor(linear_map(9, 3, s, rng), device=DEVICE)
    z = rng.standard_normal((6, 3))
    loc, scale = np.array([0.5, -1.0, 2.0]), np.array([0.5, 2.0, 1.5])
    cov = np.diag(scale**2) + 0.1
    tl, ts = torch.tensor(loc, device=DEVICE), torch.tensor(scale, device=DEVICE)
    prior, expected = {
        "mvn": (
            D.MultivariateNormal(tl, torch.tensor(cov, device=DEVICE)),
            stats.multivariate_normal(loc, cov).logpdf(z),
        ),
        "independent": (
            D.Independent(D.Normal(tl, ts), 1),
            stats.norm(loc, scale).logpdf(z).sum(-1),
        ),
        "elementwise": (
            D.Normal(tl, ts),
            stats.norm(loc, scale).logpdf(z).sum(-1),
        ),
    }[kind]
    got = induced_log_density(lambda x: x @ a.T, torch.tensor(z, device=DEVICE), prior=prior)
    np.testing.assert_allclose(got.cpu().numpy(), expected - np.log(s).sum(), rtol=0, atol=1e-10)


@pytest.mark.parametrize(("n", "m", "s"), LINEAR_CASES)
@pytest.mark.parametrize("steps", [3, 17, 33])
def test_dip_linear_map_closed_form(n, m, s, steps, rng):
    """``dip = -|z_0 - z_1|^2 / 4`` exactly.

    ``lp(t) = -|z_t|^2 / 2 + c`` with ``z_t = (1 - t) z_0 + t z_1`` and
    ``s(t) = |A (z_1 - z_0)| t``, so the arclength midpoint is ``t = 1/2`` (a sample for odd
    ``steps``) and
    ``lp(0) + lp(1) - 2 lp(1/2) = -(|z_0|^2 + |z_1|^2) / 2 + |z_0 + z_1|^2 / 4
    = -|z_0 - z_1|^2 / 4``.
    """
    a = linear_map(n, m, np.array(s), rng)
    z0, z1 = rng.standard_normal((6, m)), rng.standard_normal((6, m))
    expected = -((z0 - z1) ** 2).sum(-1) / 4
    a64 = torch.tensor(a, device=DEVICE)
    z0_64, z1_64 = torch.tensor(z0, device=DEVICE), torch.tensor(z1, device=DEVICE)
    got = dip_scores(lambda x: x @ a64.T, z0_64, z1_64, steps=steps)
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-6)
    # float32: the Jacobian is A exactly, so psi cancels; what is left is float32 rounding of the
    # path points and outputs (about 1e-7 relative), well inside 1e-5.
    a32, z0_32, z1_32 = (t.float() for t in (a64, z0_64, z1_64))
    got32 = dip_scores(lambda x: x @ a32.T, z0_32, z1_32, steps=steps)
    np.testing.assert_allclose(got32.cpu().numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize(("n", "m", "s"), LINEAR_CASES)
def test_decay_linear_map_closed_form(n, m, s, rng):
    """``eta(r) = -r / s_1^2`` along the top singular direction ``v``.

    ``s(t) = s_1 |t|``, so ``t_± = ±r / s_1``; ``lp(t) = -|z|^2 / 2 - t (z . v) - t^2 / 2 + c``
    gives ``lp(t_+) + lp(t_-) - 2 lp(0) = -r^2 / s_1^2``, divided by ``r``: all of it the prior
    term (``psi`` is constant). Another singular direction would give ``-r / s_i^2`` instead.
    A radius past ``s_1 * LATENT_LIMIT`` but within ``s_1 * search_bound`` is found by the
    extended search; one past ``s_1 * search_bound`` is not reached: NaN and ``unreached`` for
    that column only.
    """
    a = linear_map(n, m, np.array(s), rng)
    z = rng.standard_normal((5, m))
    bound = search_bound(None, m)
    assert bound > 1.5 * LATENT_LIMIT
    radii = (0.25, 0.5, 1.0, 2.0, 1.4 * s[0] * LATENT_LIMIT, 1.1 * s[0] * bound)
    expected = np.broadcast_to(-np.array(radii[:-1]) / s[0] ** 2, (5, 5))
    a64, z64 = torch.tensor(a, device=DEVICE), torch.tensor(z, device=DEVICE)
    got = decay_scores(lambda x: x @ a64.T, z64, radii=radii)
    assert got.shape == (5, len(radii)) and got.dtype == torch.float64
    np.testing.assert_allclose(got[:, :-1].cpu().numpy(), expected, rtol=1e-6)
    assert torch.isnan(got[:, -1]).all()
    terms = decay_terms(lambda x: x @ a64.T, z64, radii=radii)
    np.testing.assert_allclose(terms.prior[:, :-1].cpu().numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(terms.volume[:, :-1].cpu().numpy(), 0.0, atol=1e-9)
    assert terms.unreached[:, -1].all() and not terms.unreached[:, :-1].any()
    # float32: the offsets come from float32 output chords (relative error ~1e-6); the term
    # (z . v)(t_+ + t_-) amplifies it by about |z| s_1 / r <= 40 here, so 1e-3 relative.
    a32 = a64.float()
    got32 = decay_scores(lambda x: x @ a32.T, z64.float(), radii=radii)
    np.testing.assert_allclose(got32[:, :-1].cpu().numpy(), expected, rtol=1e-3)


@pytest.mark.parametrize("steps", [16, 17])
def test_dip_matches_float64_reference_on_an_mlp(tanh_mlp, steps):
    """Procedure 1 re-done in numpy: FD Jacobians, chords, the latent midpoint ``t*`` by
    ``np.interp`` of ``t`` at half the arclength, ``lp`` evaluated at ``z_{t*}`` itself."""
    module = Scaled(tanh_mlp, 3.0).double()
    z0, z1 = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    on_device, z0_device, z1_device = device_copy(module), z0.to(DEVICE), z1.to(DEVICE)
    terms = dip_terms(on_device, z0_device, z1_device, steps=steps)
    got = dip_scores(on_device, z0_device, z1_device, steps=steps)
    assert torch.equal(got, terms.prior + terms.volume)
    got, terms = got.cpu(), terms._replace(prior=terms.prior.cpu())
    t = np.linspace(0.0, 1.0, steps)
    for i in range(4):
        a, b = z0[i].numpy(), z1[i].numpy()
        path = (1 - t[:, None]) * a + t[:, None] * b
        with torch.no_grad():
            x = module(torch.as_tensor(path)).numpy()
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(x, axis=0), axis=1))])
        t_mid = np.interp(arc[-1] / 2, arc, t)
        ends = np.stack([a, b, (1 - t_mid) * a + t_mid * b])
        k = int(reference_rank(module, ends[:1])[0])
        lp = reference_lp(module, ends, k)
        log_p = log_normal(ends)
        assert got[i].item() == pytest.approx(lp[0] + lp[1] - 2 * lp[2], abs=1e-6)
        prior_term = log_p[0] + log_p[1] - 2 * log_p[2]
        assert terms.prior[i].item() == pytest.approx(prior_term, abs=1e-9)


def test_decay_matches_a_fine_grid_reference(tanh_mlp):
    """Procedure 2 with 64,000 uniform samples per side: the coarse search plus bisection in
    ``decay_scores`` keeps the decay within its chord error (observed 6.7e-4 relative; the
    previous 64 coarse + 16 fine samples: 2.5e-4)."""
    module = Scaled(tanh_mlp, 3.0).double()
    z = torch.randn(5, 5, dtype=torch.float64)
    radii = (0.25, 0.5, 1.0)
    got = decay_scores(device_copy(module), z.to(DEVICE), radii=radii).cpu().numpy()
    ts = np.linspace(0.0, LATENT_LIMIT, 64001)
    for i, zi in enumerate(z.numpy()):
        jac = finite_difference_jacobian(module, torch.as_tensor(zi[None]))[0]
        _, s, vt = np.linalg.svd(jac)
        k = int((s > 1e-4 * s[0]).sum())
        offsets = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                x = module(torch.as_tensor(zi + sign * ts[:, None] * vt[0])).numpy()
            arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(x, axis=0), axis=1))])
            assert arc[-1] > max(radii)
            offsets.append(sign * np.interp(radii, arc, ts))
        for j, r in enumerate(radii):
            ends = np.stack([zi + offsets[0][j] * vt[0], zi + offsets[1][j] * vt[0], zi])
            lp = reference_lp(module, ends, k)
            expected = (lp[0] + lp[1] - 2 * lp[2]) / r
            assert got[i, j] == pytest.approx(expected, rel=2e-3, abs=1e-4)


def soft_nearest_centre(tau: float, device: torch.device = DEVICE):
    """A memorizing generator: ``f(z) = sum_j softmax_j(-|z - c_j|^2 / tau) x_j``.

    Four centres in R^2 (the origin and three at radius 2, 120 degrees apart) and four fixed
    outputs in R^16 (drawn on the CPU, moved to ``device``). Each centre's neighbourhood maps to
    almost one output, and the output crossfades near the Voronoi boundaries (distance 1 from
    the origin): the induced density is concentrated on the four outputs.
    """
    gen = torch.Generator().manual_seed(7)
    angles = torch.tensor([90.0, 210.0, 330.0]) * math.pi / 180
    centres = torch.cat([torch.zeros(1, 2), 2 * torch.stack([angles.cos(), angles.sin()], -1)])
    centres, outputs = centres.to(device), torch.randn(4, 16, generator=gen).to(device)

    def f(z: torch.Tensor) -> torch.Tensor:
        d2 = (z[:, None, :] - centres).square().sum(-1)
        return torch.softmax(-d2 / tau, dim=-1) @ outputs

    return f, centres, outputs


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_memorizing_generator_dips_and_decays(tau):
    """Positive dip between centres, decay at the central centre far below a linear map's.

    Comparable linear map: one whose single stretch ``s_bar`` is the generator's mean output
    distance per latent distance between the centre and its neighbours; its dip over a latent
    distance of 2 is ``-1`` and its decay ``-r / s_bar^2`` (closed forms above).
    Observed (seed 7, float32; s_bar = 2.63, linear decay -0.072 at r = 0.5, -0.144 at r = 1):
    tau = 0.5: dip 18.6 to 18.9; decay -21.5 to -24.3 (r = 0.5), -12.2 to -13.9 (r = 1).
    tau = 1.0: dip 6.7 to 7.1; decay -3.7 to -6.0 (r = 0.5), -3.2 to -4.3 (r = 1).
    """
    f, centres, outputs = soft_nearest_centre(tau)
    dip = dip_scores(f, centres[:1].expand(3, 2), centres[1:]).cpu()
    s_bar = ((outputs[1:] - outputs[0]).norm(dim=-1) / 2).mean().item()
    print(f"tau={tau}: dip {dip.numpy().round(2)}, s_bar {s_bar:.2f}")
    assert (dip > 1.0).all(), "a memorizing map's density sags between its outputs"
    gen = torch.Generator().manual_seed(0)
    near_centre = torch.cat([torch.zeros(1, 2), 0.1 * torch.randn(3, 2, generator=gen)])
    radii = (0.5, 1.0)
    decay = decay_scores(f, near_centre.to(DEVICE), radii=radii).cpu()
    linear = -torch.tensor(radii, dtype=torch.float64) / s_bar**2
    print(f"tau={tau}: decay {decay.numpy().round(2).tolist()}, linear {linear.numpy().round(3)}")
    assert (decay < 10 * linear).all(), "at least ten times steeper than a linear map's"


def test_fixed_rank_keeps_lp_continuous_when_the_rank_falls():
    """``f(z) = (z_1, g(z_1) z_2)``, ``g(u) = exp(-1.5 u^2)``, path ``(0, 0) -> (3, 0)``.

    ``J = diag(1, g)`` on the path, so with ``k = 2`` fixed at the start ``psi = -1.5 z_1^2`` and
    ``lp = -z_1^2 / 2 - log(2 pi) + 1.5 z_1^2 = s^2 - log(2 pi)`` (arclength ``s = z_1``): the
    dip of ``s^2`` over ``[0, 3]`` is ``9 / 2``. ``g(3) = 1.4e-6 < rtol``: a per-point rank
    would drop to 1 near the end and ``lp`` would jump by ``log g``.
    """

    def f(z):
        return torch.stack([z[:, 0], torch.exp(-1.5 * z[:, 0] ** 2) * z[:, 1]], dim=-1)

    z0 = torch.zeros(1, 2, dtype=torch.float64, device=DEVICE)
    z1 = torch.tensor([[3.0, 0.0]], dtype=torch.float64, device=DEVICE)
    assert dip_scores(f, z0, z1).item() == pytest.approx(4.5, rel=1e-9)
    path = torch.stack([torch.linspace(0, 3, 61, dtype=torch.float64), torch.zeros(61)], -1)
    path = path.to(DEVICE)
    fixed = induced_log_density(f, path, k=2)
    expected = path[:, 0] ** 2 - math.log(2 * math.pi)
    torch.testing.assert_close(fixed, expected, rtol=0, atol=1e-9)
    per_point = induced_log_density(f, path)  # k from rtol at each point
    assert per_point.diff().abs().max() > 5.0 > fixed.diff().abs().max()


def test_non_finite_paths_are_nan_only_there(tanh_mlp):
    """A decoder that is NaN wherever ``z_1 > 50``: paths that touch that half-space are NaN."""

    tanh_mlp.to(DEVICE)

    def f(z):
        return tanh_mlp(z) * torch.where(z[:, :1] > 50, torch.nan, 3.0)

    z0, z1 = torch.randn(6, 5), torch.randn(6, 5)
    z0[1, 0] = 100.0  # starts in the NaN region
    z1[4, 0] = 100.0  # ends in it
    z0, z1 = z0.to(DEVICE), z1.to(DEVICE)
    bad = torch.tensor([False, True, False, False, True, False], device=DEVICE)
    dip = dip_scores(f, z0, z1)
    assert torch.isnan(dip[bad]).all()
    torch.testing.assert_close(dip[~bad], dip_scores(f, z0[~bad], z1[~bad]), rtol=0, atol=1e-6)
    decay = decay_scores(f, z0, radii=(0.1, 0.2))
    assert torch.isnan(decay[1]).all() and torch.isfinite(decay[[0, 2, 3, 5]]).all()
    torch.testing.assert_close(decay[~bad], decay_scores(f, z0[~bad], radii=(0.1, 0.2)))


def identity(z):
    return z


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: dip_scores(identity, torch.zeros(2, 3), torch.zeros(2, 3), steps=2), "steps"),
        (lambda: dip_scores(identity, torch.zeros(2, 3), torch.zeros(2, 3), steps=5.0), "steps"),
        (lambda: dip_scores(identity, torch.zeros(2, 3), torch.zeros(2, 3), steps=True), "steps"),
        (lambda: dip_scores(identity, torch.zeros(2, 3), torch.zeros(3, 3)), "same shape"),
        (lambda: dip_scores(identity, torch.zeros(3), torch.zeros(3)), "z_start"),
        (lambda: dip_scores(identity, torch.zeros(2, 3), torch.zeros(2, 3, dtype=int)), "z_end"),
        (lambda: dip_scores(identity, torch.zeros(2, 3), torch.ones(2, 3), rtol=1.0), "rtol"),
        (lambda: decay_scores(identity, torch.zeros(2, 3), radii=()), "radii"),
        (lambda: decay_scores(identity, torch.zeros(2, 3), radii=(0.5, -1.0)), "radii"),
        (lambda: decay_scores(identity, torch.zeros(2, 3), radii=(math.nan,)), "radii"),
        (lambda: decay_scores(identity, torch.zeros(2, 3), radii=0.5), "radii"),
        (lambda: decay_scores(identity, torch.zeros(2, 3), radii="ab"), "radii"),
        (lambda: decay_scores(identity, torch.zeros(3)), "`z`"),
        (lambda: decay_scores(identity, torch.zeros(2, 3), rtol=-0.1), "rtol"),
        (lambda: induced_log_density(identity, torch.zeros(2, 3), k=4), "`k`"),
        (lambda: induced_log_density(identity, torch.zeros(2, 3), prior="uniform"), "prior"),
        (lambda: dip_scores(identity, torch.zeros(2, 3), torch.ones(2, 3), prior=1.0), "prior"),
        (lambda: decay_scores(identity, torch.zeros(2, 3), prior="gauss"), "prior"),
        (
            lambda: dip_scores(
                identity, torch.zeros(2, 3), torch.ones(2, 3), s_start=torch.ones(3)
            ),
            "s_start",
        ),
        (
            lambda: dip_scores(
                identity, torch.zeros(2, 3), torch.ones(2, 3), s_end=torch.ones(3, 3)
            ),
            "s_end",
        ),
        (  # the right rows, but 2 singular values where the Jacobian has 3
            lambda: dip_scores(
                identity, torch.zeros(2, 3), torch.ones(2, 3), s_end=torch.ones(2, 2)
            ),
            "s_end",
        ),
        (lambda: decay_scores(identity, torch.zeros(2, 3), head=torch.ones(2, 3)), "head"),
        (lambda: decay_scores(identity, torch.zeros(2, 3), head=torch.ones(2, 5)), "head"),
        (lambda: decay_scores(identity, torch.zeros(2, 3), head=torch.ones(1, 6)), "head"),
        (lambda: induced_log_density(identity, torch.zeros(0, 3)), "empty"),
        (
            lambda: induced_log_density(
                identity, torch.zeros(2, 3), prior=D.Normal(torch.zeros(2, 1, 3), 1.0)
            ),
            "log_prob",
        ),
    ],
)
def test_invalid_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_grad_modes_give_the_same_values(tanh_mlp):
    tanh_mlp.to(DEVICE)
    z0, z1 = torch.randn(4, 5).to(DEVICE), torch.randn(4, 5).to(DEVICE)
    calls = {
        "lp": lambda a, b: induced_log_density(tanh_mlp, a),
        "dip": lambda a, b: dip_scores(tanh_mlp, a, b),
        "decay": lambda a, b: decay_scores(tanh_mlp, a, radii=(0.05, 0.1)),
    }
    for name, call in calls.items():
        expected = call(z0, z1)
        assert torch.isfinite(expected).all(), name
        with torch.no_grad():
            under_no_grad = call(z0, z1)
        with torch.inference_mode():
            a, b = z0.clone(), z1.clone()  # inference tensors, as trainer.validate hands over
            under_inference = call(a, b)
        torch.testing.assert_close(under_no_grad, expected, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(under_inference, expected, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_batched_equals_per_path(tanh_mlp, dtype, atol):
    """One call for all paths equals one call per path.

    float64: to 1e-9 (the batching itself is exact). float32: BLAS rounds a batch of 6 and a
    batch of 1 differently (about 1e-7 relative in each Jacobian entry), which moves ``psi`` by a
    few 1e-7 and ``eta = (...) / r`` by up to ``2e-6`` at ``r = 0.5``: 1e-5.
    """
    module = Scaled(tanh_mlp, 3.0).to(DEVICE, dtype)
    z0 = torch.randn(6, 5, dtype=dtype).to(DEVICE)
    z1 = torch.randn(6, 5, dtype=dtype).to(DEVICE)
    batched = {
        "lp": induced_log_density(module, z0),
        "dip": dip_scores(module, z0, z1),
        "decay": decay_scores(module, z0),
    }
    single = {
        "lp": torch.cat([induced_log_density(module, z0[i : i + 1]) for i in range(6)]),
        "dip": torch.cat([dip_scores(module, z0[i : i + 1], z1[i : i + 1]) for i in range(6)]),
        "decay": torch.cat([decay_scores(module, z0[i : i + 1]) for i in range(6)]),
    }
    for name, value in batched.items():
        assert torch.isfinite(value).all(), name
        torch.testing.assert_close(value, single[name], rtol=0, atol=atol, msg=name)


# ---------------------------------------------------------------- priors, terms, reuse
def test_dip_terms_with_priors(rng):
    """Linear map, so the arclength midpoint is ``t = 1/2`` and ``psi`` cancels: the volume
    term is 0 and the prior term is ``log p(z_0) + log p(z_1) - 2 log p((z_0 + z_1) / 2)``:
    scipy's log-density for an independent normal prior, exactly 0 for the sphere's constant."""
    s = np.array([2.0, 1.0, 0.5])
    a = torch.tensor(linear_map(7, 3, s, rng), device=DEVICE)
    f = lambda x: x @ a.T  # noqa: E731
    z0, z1 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    ends = torch.tensor(z0, device=DEVICE), torch.tensor(z1, device=DEVICE)
    loc, scale = np.array([0.5, -1.0, 2.0]), np.array([0.5, 2.0, 1.5])
    prior = D.Independent(
        D.Normal(torch.tensor(loc, device=DEVICE), torch.tensor(scale, device=DEVICE)), 1
    )
    terms = dip_terms(f, *ends, prior=prior)
    ref = stats.norm(loc, scale)
    logpdf = lambda z: ref.logpdf(z).sum(-1)  # noqa: E731
    expected = logpdf(z0) + logpdf(z1) - 2 * logpdf((z0 + z1) / 2)
    np.testing.assert_allclose(terms.prior.cpu().numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(terms.volume.cpu().numpy(), 0.0, atol=1e-9)
    sphere = dip_terms(f, *ends, prior="sphere")
    assert torch.equal(sphere.prior.cpu(), torch.zeros(5, dtype=torch.float64))
    np.testing.assert_allclose(sphere.volume.cpu().numpy(), 0.0, atol=1e-9)
    normal = dip_scores(f, *ends, prior="normal")
    np.testing.assert_allclose(normal.cpu().numpy(), -((z0 - z1) ** 2).sum(-1) / 4, rtol=1e-9)


def test_decay_terms_with_priors(rng):
    """Linear map: ``t_± = ±r / s_1`` along ``v_1``, ``psi`` constant (volume term 0), prior term
    ``(log p(z + t_+ v) + log p(z + t_- v) - 2 log p(z)) / r`` by scipy (either sign of ``v``
    gives the same sum); the sphere prior's term is 0."""
    s = np.array([2.0, 1.0, 0.5])
    a_np = linear_map(7, 3, s, rng)
    a = torch.tensor(a_np, device=DEVICE)
    z = rng.standard_normal((4, 3))
    loc, scale = np.array([0.5, -1.0, 2.0]), np.array([0.5, 2.0, 1.5])
    prior = D.Normal(torch.tensor(loc, device=DEVICE), torch.tensor(scale, device=DEVICE))
    radii = (0.5, 1.0)
    terms = decay_terms(lambda x: x @ a.T, torch.tensor(z, device=DEVICE), radii=radii, prior=prior)
    terms = type(terms)(*(t.cpu() for t in terms))
    v = np.linalg.svd(a_np)[2][0]
    logpdf = lambda x: stats.norm(loc, scale).logpdf(x).sum(-1)  # noqa: E731
    for j, r in enumerate(radii):
        t = r / s[0]
        expected = (logpdf(z + t * v) + logpdf(z - t * v) - 2 * logpdf(z)) / r
        np.testing.assert_allclose(terms.prior[:, j].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(terms.volume.numpy(), 0.0, atol=1e-9)
    assert not terms.unreached.any()
    sphere = decay_terms(
        lambda x: x @ a.T, torch.tensor(z, device=DEVICE), radii=radii, prior="sphere"
    )
    assert torch.equal(sphere.prior.cpu(), torch.zeros(4, 2, dtype=torch.float64))


def test_scores_are_the_sum_of_their_terms(tanh_mlp):
    module = Scaled(tanh_mlp, 3.0).to(DEVICE)
    z0, z1 = torch.randn(6, 5).to(DEVICE), torch.randn(6, 5).to(DEVICE)
    dip = dip_terms(module, z0, z1)
    assert torch.equal(dip_scores(module, z0, z1), dip.prior + dip.volume)
    decay = decay_terms(module, z0)
    assert torch.equal(decay_scores(module, z0), decay.prior + decay.volume)
    assert torch.isfinite(dip.volume).all() and torch.isfinite(decay.volume).all()


def test_precomputed_spectra_give_the_same_scores_with_fewer_jacobians(tanh_mlp, monkeypatch):
    """``s_start`` / ``s_end`` (the probe's spectra) and ``head`` (spectra and top vector) leave
    one Jacobian per path for the dip (its midpoint) and none at the decay's centres."""
    from lightning_memwatch.functional import decay as decay_module
    from lightning_memwatch.functional import density as density_module
    from lightning_memwatch.functional.jacobian import map_jacobian_chunks
    from lightning_memwatch.functional.spectrum import (
        gram_singular_values,
        gram_singular_values_and_top_vector,
    )

    module = Scaled(tanh_mlp, 3.0).double().to(DEVICE)
    z0 = torch.randn(6, 5, dtype=torch.float64).to(DEVICE)
    z1 = torch.randn(6, 5, dtype=torch.float64).to(DEVICE)
    s0 = map_jacobian_chunks(module, z0, gram_singular_values)
    s1 = map_jacobian_chunks(module, z1, gram_singular_values)
    head = map_jacobian_chunks(module, z0, gram_singular_values_and_top_vector)
    points: list[int] = []

    def counting(f, z, reduce, **kwargs):
        points.append(z.shape[0])
        return map_jacobian_chunks(f, z, reduce, **kwargs)

    monkeypatch.setattr(density_module, "map_jacobian_chunks", counting)
    monkeypatch.setattr(decay_module, "map_jacobian_chunks", counting)
    default = dip_scores(module, z0, z1)
    assert points == [18]  # midpoint, start and end of 6 paths
    given = dip_scores(module, z0, z1, s_start=s0, s_end=s1)
    assert points[1:] == [6]
    torch.testing.assert_close(given, default, rtol=0, atol=1e-12)
    half = dip_scores(module, z0, z1, s_end=s1)
    assert points[2:] == [12]
    torch.testing.assert_close(half, default, rtol=0, atol=1e-12)
    points.clear()
    default = decay_scores(module, z0)
    assert points == [6, 24]  # the centres, then 2 sides x 2 radii
    given = decay_scores(module, z0, head=head)
    assert points[2:] == [24]
    torch.testing.assert_close(given, default, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- flat regions
def centres_on_a_line(
    tau: float, gap: float = 10.0, dtype=torch.float64, n: int = 16, device: str = "cpu"
):
    """A memorizer flat around its training points: ``f(z) = sum_j softmax_j(-|z - c_j|^2 /
    tau) x_j`` with centres ``(-gap, 0), (0, 0), (gap, 0)`` in R^2, outputs ``x_j`` in R^n.

    The output crossfades only near the Voronoi boundaries, ``gap / 2 = 5`` from the middle
    centre: past ``LATENT_LIMIT``. Along ``v = e_1`` the middle centre reaches both neighbours'
    outputs; an outer centre's line leaves on its outer side where the output never moves.
    Returns ``f``, the centres, the outputs (on ``device``; drawn on the CPU) and the analytic
    float64 Jacobian (numpy) of ``f``.
    """
    gen = torch.Generator().manual_seed(7)
    centres = torch.tensor([[-gap, 0.0], [0.0, 0.0], [gap, 0.0]], dtype=dtype, device=device)
    outputs = torch.randn(3, n, generator=gen).to(device, dtype)

    def f(z: torch.Tensor) -> torch.Tensor:
        d2 = (z[:, None, :] - centres).square().sum(-1)
        return torch.softmax(-d2 / tau, dim=-1) @ outputs

    c, x = centres.double().cpu().numpy(), outputs.double().cpu().numpy()

    def jacobian(z: np.ndarray) -> np.ndarray:
        """``J = sum_j x_j grad p_j^T``, ``grad p_j = p_j (g_j - sum_k p_k g_k)``,
        ``g_j = -2 (z - c_j) / tau``."""
        logits = -((z[:, None, :] - c) ** 2).sum(-1) / tau
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        g = -2 * (z[:, None, :] - c) / tau
        dp = p[..., None] * (g - (p[..., None] * g).sum(1, keepdims=True))
        return np.einsum("jn,bjm->bnm", x, dp)

    return f, centres, outputs, jacobian


def test_flat_region_decay_is_measured_past_the_first_limit():
    """Before the extended search every centre was NaN (the arclength at ``LATENT_LIMIT`` is
    below both radii: checked here on a fine grid). Now the middle centre is measured, equal to
    a fine-grid float64 reference (analytic Jacobians) and 40 times steeper than a linear map
    with the same output distances; the outer centres are ``unreached`` (their outer side
    never moves ``r`` within ``search_bound``), not NaN of another kind.
    Observed: middle centre -235.0 (r = 0.5) and -119.5 (r = 1), prior term -45.4 and -23.5.
    """
    f, centres, outputs, jac = centres_on_a_line(tau=2.0)
    radii = (0.5, 1.0)
    f_device, centres_device, *_ = centres_on_a_line(tau=2.0, device=DEVICE)
    terms = decay_terms(f_device, centres_device, radii=radii)
    terms = type(terms)(*(t.cpu() for t in terms))
    bound = search_bound(None, 2)
    ts = np.linspace(0.0, bound, 400_001)
    at_limit = int(np.searchsorted(ts, LATENT_LIMIT))
    c = centres.numpy()
    for i in range(3):
        _, s, vt = np.linalg.svd(jac(c[i : i + 1])[0])
        k = int((s > 1e-4 * s[0]).sum())
        offsets, arcs = [], []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                x = f(torch.as_tensor(c[i] + sign * ts[:, None] * vt[0])).numpy()
            arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(x, axis=0), axis=1))])
            assert arc[at_limit] < min(radii), "the first limit alone leaves it NaN"
            arcs.append(arc[-1])
            offsets.append(sign * np.interp(radii, arc, ts))
        if min(arcs) < max(radii):
            assert terms.unreached[i].all() and torch.isnan(terms.prior[i]).all()
            continue
        assert i == 1 and not terms.unreached[i].any()
        for j, r in enumerate(radii):
            ends = np.stack([c[i] + offsets[0][j] * vt[0], c[i] + offsets[1][j] * vt[0], c[i]])
            sv = np.linalg.svd(jac(ends), compute_uv=False)
            lp = log_normal(ends) - np.log(sv[:, :k]).sum(-1)
            got = (terms.prior + terms.volume)[i, j].item()
            assert got == pytest.approx((lp[0] + lp[1] - 2 * lp[2]) / r, rel=2e-3)
            s_bar = ((outputs[1:] - outputs[:-1]).norm(dim=-1) / 10).mean().item()
            assert got < 40 * -r / s_bar**2, "far steeper than a linear map"
    assert terms.unreached.sum() == 4  # both radii at both outer centres


def test_unreached_is_apart_from_other_nans():
    """``f(z) = a tanh(z_1)``: the arclength from 0 along ``e_1`` is ``|a| tanh |t| < |a|``, so
    a radius above ``|a|`` is never reached (unreached), one below is (finite); a decoder that
    is NaN past ``z_1 > 2`` gives NaN there that is not "unreached"."""
    a = torch.tensor([0.6, 0.8], dtype=torch.float64, device=DEVICE)  # |a| = 1

    def f(z):
        return torch.tanh(z[:, :1]) * a

    z = torch.zeros(3, 2, dtype=torch.float64, device=DEVICE)
    terms = decay_terms(f, z, radii=(0.5, 1.5))
    assert torch.isfinite(terms.prior[:, 0]).all() and not terms.unreached[:, 0].any()
    assert terms.unreached[:, 1].all() and torch.isnan(terms.volume[:, 1]).all()

    def g(x):
        return f(x) * torch.where(x[:, :1] > 2, torch.nan, 1.0)

    broken = decay_terms(g, z, radii=(0.5, 1.5))
    assert torch.isfinite(broken.prior[:, 0]).all()
    assert torch.isnan(broken.prior[:, 1]).all() and not broken.unreached.any()


def test_saturated_memorizer_centres_are_counted_unreached():
    """``tests.conftest.SoftNearestCentre`` with ``scale = 6``: at each centre ``c_j = 6 e_j``
    the top singular direction points away from every other centre on one side, where the
    output stays on ``x_j``: that side never moves ``r`` within ``search_bound`` (checked on a
    fine float64 grid), so every centre's decay is NaN *and* flagged unreached. The smooth
    memorizer of :func:`soft_nearest_centre` (centres 2 apart) stays measured and unflagged."""
    from tests.conftest import SoftNearestCentre

    gen = torch.Generator().manual_seed(0)
    f = SoftNearestCentre(torch.rand(4, 16, generator=gen, dtype=torch.float64), scale=6.0)
    centres = f.centres.clone()
    terms = decay_terms(device_copy(f), centres.to(DEVICE), radii=(0.5, 1.0))
    assert terms.unreached.all() and torch.isnan(terms.prior).all()
    ts = torch.linspace(0.0, search_bound(None, 4), 20_001, dtype=torch.float64)[:, None]
    v = torch.linalg.svd(torch.func.jacrev(f)(centres[:1])[0, :, 0]).Vh[0]  # reverse mode
    with torch.no_grad():
        arcs = [f(centres[0] + sign * ts * v).diff(dim=0).norm(dim=1).sum() for sign in (1, -1)]
    shortest = min(arc.item() for arc in arcs)
    assert shortest < 0.5 < max(arc.item() for arc in arcs)
    smooth, centres2, _ = soft_nearest_centre(0.5)  # on the test device
    measured = decay_terms(smooth, centres2[:1], radii=(0.5, 1.0))
    assert torch.isfinite(measured.prior).all() and not measured.unreached.any()


def dense_unreached(f, jacobian, z: np.ndarray, radii, bound: float) -> tuple[np.ndarray, ...]:
    """Which radii a line ``z_i + t v_i`` never reaches on some side within ``|t| <= bound``.

    ``v_i`` the top right-singular vector of the analytic float64 Jacobian (numpy SVD); the
    arclength summed over 20,001 uniform samples per side (float64 decoder). Also returns the
    arclength per side at ``bound`` and at ``LATENT_LIMIT``, ``(B, 2)`` each.
    """
    ts = np.linspace(0.0, bound, 20_001)
    at_limit = int(np.searchsorted(ts, LATENT_LIMIT))
    ends, limits = np.zeros((len(z), 2)), np.zeros((len(z), 2))
    for i, zi in enumerate(z):
        vt = np.linalg.svd(jacobian(zi[None])[0])[2]
        for side, sign in enumerate((1.0, -1.0)):
            with torch.no_grad():
                x = f(torch.as_tensor(zi + sign * ts[:, None] * vt[0])).numpy()
            arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(x, axis=0), axis=1))])
            ends[i, side], limits[i, side] = arc[-1], arc[at_limit]
    return ends.min(axis=1)[:, None] < np.asarray(radii), ends, limits


def test_unreached_count_on_separated_centres_equals_a_dense_float64_count():
    """Centres 10 apart (:func:`centres_on_a_line`): lines through the centres, their flat
    surroundings and near the crossfades. The search to ``LATENT_LIMIT`` alone reaches no
    radius at any centre (NaN at every centre, as before the extended search); the extended one
    measures a decay wherever some side's output moves ``r`` within ``search_bound`` and flags
    the rest, radius by radius: ``unreached`` equals the count of a dense float64 evaluation
    of the same lines, and the decay is finite exactly where it is not flagged.
    Observed: 26 of 30 (point, radius) entries unreached (8, 8 and 10 per radius).
    """
    f, centres, _, jac = centres_on_a_line(tau=2.0)
    z = np.array(
        [[-12.0, 0.3], [-6.5, 0.5], [-3.0, -0.2], [2.0, 0.4], [5.5, 0.0], [9.0, -0.3], [13, 0.2]]
    )
    z = np.concatenate([centres.cpu().numpy(), z])
    radii = (0.5, 1.0, 5.5)  # the crossfade moves the output 4.95 or 6.68: 5.5 splits them
    bound = search_bound(None, 2)
    expected, ends, limits = dense_unreached(f, jac, z, radii, bound)
    # the counts cannot hinge on the coarse chords' shortfall: no shorter side within 2% of r
    assert np.abs(ends.min(axis=1)[:, None] / np.asarray(radii) - 1).min() > 0.02
    assert (limits[:3].min(axis=1) < min(radii)).all(), "at LATENT_LIMIT every centre is NaN"
    f_device = centres_on_a_line(tau=2.0, device=DEVICE)[0]
    terms = decay_terms(f_device, torch.as_tensor(z, device=DEVICE), radii=radii)
    np.testing.assert_array_equal(terms.unreached.cpu().numpy(), expected)
    score = (terms.prior + terms.volume).cpu().numpy()
    np.testing.assert_array_equal(np.isfinite(score), ~expected)
    assert 0 < expected.sum() < expected.size and expected[:, 2].sum() > expected[:, 0].sum()
    assert not expected[1, :2].any(), "the middle centre is measured below its crossfade"
    print(f"unreached {expected.sum()} of {expected.size}, per radius {expected.sum(0)}")


# ------------------------------------------------------------------- radii="auto"
def test_auto_radii_of_a_repeated_training_set_are_those_of_its_distinct_samples(rng):
    """A training set that repeats its 32 samples 16 times (as small-data fine-tuning scripts
    do) has the radii of its 32 distinct samples, against numpy; a few repeats among distinct
    samples count once too."""
    distinct = rng.standard_normal((32, 1, 4, 4))
    repeated = np.tile(distinct, (16, 1, 1, 1))[rng.permutation(512)]
    want = numpy_distinct_radii(distinct)
    got = nearest_neighbour_radii(torch.from_numpy(repeated))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got == nearest_neighbour_radii(torch.from_numpy(distinct))
    some = np.concatenate([distinct, distinct[:5]])  # 5 repeats: the median is the distinct one
    np.testing.assert_allclose(nearest_neighbour_radii(torch.from_numpy(some)), want, rtol=1e-12)
    fractions = (0.1, 0.2, 0.3)
    np.testing.assert_allclose(
        nearest_neighbour_radii(torch.from_numpy(repeated), fractions),
        numpy_distinct_radii(distinct, fractions),
        rtol=1e-12,
    )


def test_auto_radii_need_two_distinct_samples():
    one = torch.ones(1, 3)
    with pytest.raises(ValueError, match=r"two distinct training samples.*16 samples with 1"):
        nearest_neighbour_radii(one.repeat(16, 1))
    assert nearest_neighbour_radii(torch.cat([one.repeat(15, 1), 2 * one])) == pytest.approx(
        (0.25 * math.sqrt(3), 0.5 * math.sqrt(3))
    )
