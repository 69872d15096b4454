"""Spectrum descriptors against closed forms of linear maps with chosen singular values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_memwatch.functional import (
    intrinsic_dim,
    local_rank,
    local_scaling,
    log_condition,
    singular_values,
)
from tests.conftest import finite_difference_jacobian, linear_map
from tests.devices import DEVICE

SIGMA_TOL = 1e-5  # singular values within 1e-5 * s_1 (the accuracy target)


def chosen_spectrum(r: int, condition: float) -> np.ndarray:
    return 3.0 * np.geomspace(1.0, 1.0 / condition, r)


def closed_forms(s: np.ndarray) -> dict[str, float]:
    """psi, nu, log condition of a full-rank spectrum in float64 (Humayun et al. (2024), eq. 2,
    sec. 2; Ramirez et al. (poster))."""
    p = s / s.sum() + 1e-30
    return {
        "psi": float(np.log(s).sum()),
        "nu": float(np.exp(-(p * np.log(p)).sum())),
        "log_cond": float(np.log(s[0] / s[-1])),
    }


@pytest.mark.parametrize("m", [2, 16, 64])
@pytest.mark.parametrize("wide", [False, True], ids=["n>m", "n<m"])
@pytest.mark.parametrize("condition", [10.0, 1e4])
def test_linear_map_spectrum_and_descriptors(m, wide, condition, rng):
    n = m // 2 if wide and m > 2 else (1 if wide else 3 * m)
    r = min(n, m)
    s = chosen_spectrum(r, condition)
    a = torch.tensor(linear_map(n, m, s, rng), dtype=torch.float32, device=DEVICE)
    z = torch.randn(4, m).to(DEVICE)
    got = singular_values(lambda x: x @ a.T, z)
    assert got.dtype == torch.float64 and got.shape == (4, r) and got.device == DEVICE
    np.testing.assert_allclose(
        got.cpu().numpy(), np.broadcast_to(s, (4, r)), rtol=0, atol=SIGMA_TOL * s[0]
    )

    # Every descriptor is a function of s; its error bound follows from the singular-value bound:
    # |d log s_i| <= SIGMA_TOL * s_1 / s_i.
    log_err = SIGMA_TOL * s[0] / s
    expected = closed_forms(s)
    rtol = 1e-5  # below 1 / condition, so all r values count
    assert (intrinsic_dim(got, rtol=rtol) == r).all()
    np.testing.assert_allclose(
        local_scaling(got, rtol=rtol).cpu().numpy(), expected["psi"], atol=log_err.sum()
    )
    np.testing.assert_allclose(
        log_condition(got, rtol=rtol).cpu().numpy(),
        expected["log_cond"],
        atol=log_err[0] + log_err[-1],
    )
    np.testing.assert_allclose(local_rank(got).cpu().numpy(), expected["nu"], rtol=r * SIGMA_TOL)


def test_descriptors_are_exact_on_exact_spectra(rng):
    s = np.sort(rng.uniform(0.1, 5.0, size=(6, 9)))[:, ::-1].copy()
    on_device = torch.tensor(s, device=DEVICE)
    got = {
        "psi": local_scaling(on_device, rtol=0.0).cpu(),
        "nu": local_rank(on_device).cpu(),
        "log_cond": log_condition(on_device, rtol=0.0).cpu(),
    }
    for i, row in enumerate(s):
        for key, value in closed_forms(row).items():
            assert got[key][i].item() == pytest.approx(value, rel=1e-12)


def test_rank_deficient_map(rng):
    """Rank 3 of m = 8: three non-degenerate values; psi is the sum of their logs."""
    s_true = np.array([2.0, 0.7, 0.05])
    a = torch.tensor(linear_map(20, 8, s_true, rng), dtype=torch.float32, device=DEVICE)
    s = singular_values(lambda x: x @ a.T, torch.randn(5, 8).to(DEVICE))
    np.testing.assert_allclose(
        s[:, :3].cpu().numpy(), np.broadcast_to(s_true, (5, 3)), atol=SIGMA_TOL * 2
    )
    assert (s[:, 3:] < 1e-4 * 2.0).all()
    assert (intrinsic_dim(s) == 3).all()
    np.testing.assert_allclose(
        local_scaling(s).cpu().numpy(), np.log(s_true).sum(), atol=(SIGMA_TOL * 2 / s_true).sum()
    )
    np.testing.assert_allclose(
        log_condition(s).cpu().numpy(), np.log(2.0 / 0.05), atol=SIGMA_TOL * 2 * (1 / 2 + 1 / 0.05)
    )


def test_fixed_k_overrides_the_threshold():
    s = torch.tensor([[4.0, 2.0, 1.0], [8.0, 1e-9, 0.0]], dtype=torch.float64, device=DEVICE)
    k = torch.tensor([3, 1], device=DEVICE)
    np.testing.assert_allclose(local_scaling(s, k=2).cpu().numpy(), [np.log(8.0), np.log(8e-9)])
    np.testing.assert_allclose(local_scaling(s, k=k).cpu().numpy(), [np.log(8.0)] * 2)
    np.testing.assert_allclose(log_condition(s, k=2).cpu().numpy(), [np.log(2.0), np.log(8e9)])
    with pytest.raises(ValueError, match="integer in"):
        local_scaling(s, k=4)
    with pytest.raises(ValueError, match="rtol"):
        intrinsic_dim(s, rtol=1.5)


def test_zero_rank_rows():
    s = torch.zeros(2, 3, dtype=torch.float64, device=DEVICE)
    assert (intrinsic_dim(s) == 0).all()
    assert (local_scaling(s) == 0).all()  # the empty product of Feiszli (2017), eq. 1 is 1
    assert torch.isnan(log_condition(s)).all()
    assert torch.isnan(local_rank(s)).all()


@pytest.mark.parametrize("fixture", ["tanh_mlp", "conv_decoder"])
def test_nonlinear_decoders_match_float64_svd(fixture, request):
    module = request.getfixturevalue(fixture).to(DEVICE)
    m = module.fc.in_features if fixture == "conv_decoder" else 5
    z = torch.randn(8, m).to(DEVICE)
    s = singular_values(module, z).cpu()
    ref = np.linalg.svd(finite_difference_jacobian(module, z), compute_uv=False)
    assert (np.abs(s.numpy() - ref) <= SIGMA_TOL * ref[:, :1]).all()


def test_chunked_equals_unchunked(conv_decoder):
    conv_decoder.to(DEVICE)
    z = torch.randn(11, 6).to(DEVICE)
    whole = singular_values(conv_decoder, z)
    for chunk_size in (1, 4):
        torch.testing.assert_close(singular_values(conv_decoder, z, chunk_size=chunk_size), whole)


def test_non_finite_points_give_nan_rows_only_there(tanh_mlp):
    """sqrt of a negative first coordinate: NaN output and Jacobian exactly at those points."""

    tanh_mlp.to(DEVICE)

    def decoder(z):
        return tanh_mlp(z) + torch.sqrt(z[:, :1])

    z = torch.randn(12, 5)
    z[::3, 0] = -z[::3, 0].abs() - 0.1
    z[1::3, 0] = z[1::3, 0].abs() + 0.1
    z[2::3, 0] = z[2::3, 0].abs() + 0.1
    z = z.to(DEVICE)
    bad = z[:, 0] < 0
    s = singular_values(decoder, z, chunk_size=5)
    assert torch.isnan(s[bad]).all()
    assert torch.isfinite(s[~bad]).all()
    torch.testing.assert_close(s[~bad], singular_values(decoder, z[~bad]))
    assert (intrinsic_dim(s)[bad] == -1).all()
    for descriptor in (local_scaling, local_rank, log_condition):
        values = descriptor(s)
        assert torch.isnan(values[bad]).all() and torch.isfinite(values[~bad]).all()


def test_grad_modes_give_the_same_spectrum(conv_decoder):
    conv_decoder.to(DEVICE)
    z = torch.randn(5, 6).to(DEVICE)
    expected = singular_values(conv_decoder, z)
    with torch.inference_mode():
        got = singular_values(conv_decoder, z.clone())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _nan_where_first_negative(z, values):
    """``values`` with every output of a point whose first coordinate is negative set to NaN;
    the NaN is a constant of ``torch.where``, so forward-mode AD gives those points a finite
    (zero) Jacobian."""
    return torch.where(z[:, :1] < 0, torch.nan, values)


@pytest.mark.parametrize(
    "make_decoder",
    [
        # the case: the NaN replaces the output, the Jacobian there is exactly zero
        lambda net: lambda z: _nan_where_first_negative(z, net(z)),
        # relu passes a NaN input on but has a finite derivative: J = J_net there, not zero
        lambda net: lambda z: torch.relu(_nan_where_first_negative(z, net(z) + 5.0)),
    ],
    ids=["nan-constant", "relu-of-nan"],
)
def test_non_finite_outputs_give_nan_descriptors(tanh_mlp, make_decoder):
    """A point whose output is NaN has no Jacobian: every descriptor is NaN there (and k = -1),
    even where forward-mode AD hands back a finite tangent (issue 14 item 5)."""
    decoder = make_decoder(tanh_mlp.to(DEVICE))
    z = torch.randn(10, 5)
    z[:, 0] = torch.linspace(-1.0, 1.0, 10)
    z = z.to(DEVICE)
    bad = z[:, 0] < 0
    assert torch.isnan(decoder(z)[bad]).all() and torch.isfinite(decoder(z)[~bad]).all()
    s = singular_values(decoder, z, chunk_size=3)
    assert torch.isnan(s[bad]).all()
    torch.testing.assert_close(s[~bad], singular_values(tanh_mlp, z[~bad]))
    assert (intrinsic_dim(s)[bad] == -1).all() and (intrinsic_dim(s)[~bad] == 5).all()
    for descriptor in (local_scaling, local_rank, log_condition):
        values = descriptor(s)
        assert torch.isnan(values[bad]).all() and torch.isfinite(values[~bad]).all()
