"""Top-k singular values by block Krylov against chosen spectra and the exact path."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from lightning_memwatch.functional import (
    intrinsic_dim,
    jacobian,
    local_rank,
    local_scaling,
    log_condition,
    singular_values,
    top_singular_values,
    top_singular_values_and_vector,
)
from tests.conftest import random_orthogonal
from tests.devices import DEVICE, rng_states, same_rng_states

K = 32
#: (m, n): n > m and n < m, m from 64 to 1,024.
SHAPES = [(64, 256), (256, 784), (1024, 1152), (256, 64), (1024, 256)]


@functools.cache
def _bases(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n * 10_000 + m)
    r = min(n, m)
    return random_orthogonal(n, rng)[:, :r], random_orthogonal(m, rng)[:, :r]


def spectrum_map(n: int, m: int, s: np.ndarray):
    """``z -> A z``, ``A = U diag(s) V^T`` (n x m) in float32 on the test device, Haar U, V built
    once per shape (as ``tests.conftest.linear_map`` does, cached: the 1,024-size QRs dominate
    the tests)."""
    u, v = _bases(n, m)
    a32 = torch.tensor((u * s) @ v.T, dtype=torch.float32, device=DEVICE)
    return lambda z: z @ a32.T


def gapped(r: int, ratio: float) -> np.ndarray:
    """Top ``K`` from 3 down to 1, then a tail from ``ratio`` down to ``1e-3 ratio``."""
    return np.concatenate([np.geomspace(3.0, 1.0, K), ratio * np.geomspace(1.0, 1e-3, r - K)])


def latents(*shape: int) -> torch.Tensor:
    """Standard normal latents drawn on the CPU (the same numbers on every device), moved to the
    test device."""
    return torch.randn(*shape).to(DEVICE)


def relative_error(got: torch.Tensor, s: np.ndarray) -> np.ndarray:
    return np.abs(got.cpu().numpy() - s[: got.shape[1]]) / s[: got.shape[1]]


@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_gap_after_k_gives_the_top_k_to_1e_3(m, n):
    """``s_{k+1} = s_k / 10``: the default (one Krylov step) is within 1e-3 relative (measured
    1e-8 to 2e-4 over these shapes); two steps reach the same bound at a gap of only 2x."""
    for ratio, iterations in ((0.1, 1), (0.5, 2)):
        s = gapped(min(n, m), ratio)
        got = top_singular_values(spectrum_map(n, m, s), latents(2, m), K, iterations=iterations)
        assert got.shape == (2, K) and got.dtype == torch.float64
        assert relative_error(got, s).max() <= 1e-3, (ratio, iterations)


@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_flat_spectrum_is_exact(m, n):
    """All singular values equal: every direction of the row space is a singular vector, so any
    Krylov basis gives them to float32 precision."""
    s = np.full(min(n, m), 0.7)
    got = top_singular_values(spectrum_map(n, m, s), latents(2, m), K)
    assert relative_error(got, s).max() <= 1e-5


@pytest.mark.parametrize(("m", "n"), SHAPES)
@pytest.mark.parametrize(
    "spectrum",
    [
        lambda r: gapped(r, 0.5),
        lambda r: 3.0 * np.geomspace(1.0, 1e-4, r),
        lambda r: 1.0 / np.sqrt(np.arange(1.0, r + 1)),
    ],
    ids=["gap-2x", "geometric", "inverse-sqrt"],
)
def test_no_gap_error_is_bounded_and_one_sided(m, n, spectrum):
    """Without a 10x gap the top-k values are Ritz values: never above the exact ones
    (interlacing), and low by at most 35% near s_k (measured worst: 29% for a gap of 2x and
    21% for ``1/sqrt(i)``, both at m = 1,024), s_1 within 5% (measured worst 4.6%: the
    geometric spectrum at m = 1,024, n = 1,152, whose top 32 values span only 7%)."""
    s = spectrum(min(n, m))
    got = top_singular_values(spectrum_map(n, m, s), latents(2, m), K)
    assert (got.cpu().numpy() <= s[:K] * (1 + 1e-5)).all()
    err = relative_error(got, s)
    assert err.max() <= 0.35 and err[:, 0].max() <= 0.05


def test_low_rank_map_gives_its_rank_then_zeros():
    """Rank 5 < k: five exact values, then zeros (the Krylov basis drops the directions that are
    already in its span instead of orthonormalising round-off)."""
    s = np.array([4.0, 2.0, 1.0, 0.5, 0.25])
    got = top_singular_values(spectrum_map(300, 200, np.pad(s, (0, 195))), latents(3, 200), 12)
    np.testing.assert_allclose(got[:, :5].cpu().numpy(), np.broadcast_to(s, (3, 5)), rtol=1e-5)
    assert (got[:, 5:] <= 1e-5 * s[0]).all()
    assert (intrinsic_dim(got) == 5).all()


def test_top_vector_is_the_top_right_singular_vector():
    """``s_1 = 2 s_2``, so that ``v_1`` is well determined. A Ritz vector is less accurate than
    its Ritz value (the value error is quadratic in the angle): measured angle ~1e-4 rad, so
    ``1 - cos`` ~ 1e-8; the sign convention makes the cosine positive."""
    m, n = 256, 512
    s = gapped(m, 0.1)
    s[0] = 2 * s[1]
    f = spectrum_map(n, m, s)
    values, vector = top_singular_values_and_vector(f, latents(3, m), K)
    vector = vector.cpu()
    v = _bases(n, m)[1][:, 0]
    v1 = v * np.sign(v[np.abs(v).argmax()])  # largest-magnitude entry positive
    np.testing.assert_allclose(np.linalg.norm(vector.numpy(), axis=-1), 1.0, rtol=1e-10)
    assert (1 - vector.numpy() @ v1).max() <= 1e-6
    torch.testing.assert_close(values, top_singular_values(f, latents(3, m), K))


def test_descriptors_on_a_top_k_spectrum():
    """psi, nu and the log condition over the top k only; k(z) capped at k (rank 100 > k)."""
    m, n = 128, 400
    s = np.concatenate([gapped(100, 0.1), np.zeros(m - 100)])
    got = top_singular_values(spectrum_map(n, m, s), latents(2, m), K)
    top = s[:K]
    p = top / top.sum() + 1e-30
    assert (intrinsic_dim(got, rtol=1e-6) == K).all()
    np.testing.assert_allclose(
        local_scaling(got, rtol=1e-6).cpu().numpy(), np.log(top).sum(), atol=1e-3
    )
    np.testing.assert_allclose(
        local_rank(got).cpu().numpy(), np.exp(-(p * np.log(p)).sum()), rtol=1e-4
    )
    np.testing.assert_allclose(
        log_condition(got, rtol=1e-6).cpu().numpy(), np.log(top[0] / top[-1]), atol=1e-3
    )


class WideConvDecoder(nn.Module):
    """A smooth conv decoder ``R^128 -> (1, 16, 16)``."""

    def __init__(self, m: int = 128) -> None:
        super().__init__()
        self.fc = nn.Linear(m, 16 * 4 * 4)
        self.up1 = nn.ConvTranspose2d(16, 8, kernel_size=4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(8, 1, kernel_size=4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(z)).reshape(-1, 16, 4, 4)
        return torch.sigmoid(self.up2(torch.tanh(self.up1(h))))


def exact_top(f, z, k):
    """Float64 reference: SVD of the exact Jacobian, values and top right vector (sign fixed)."""
    _, s, vh = np.linalg.svd(jacobian(f, z).double().cpu().numpy())
    v = vh[:, 0]
    v = v * np.sign(np.take_along_axis(v, np.abs(v).argmax(-1)[:, None], -1))
    return s[:, :k], v


def test_conv_decoder_against_the_exact_path():
    """m = 128, n = 256, random weights: a nearly flat spectrum (s_1 / s_2 ~ 1.07, s_32 / s_33
    ~ 1.02), the hard case. Measured: one step, s_1 0.6% and s_32 10% low; two steps, s_1 2e-6
    and s_32 5e-3; the top vector is as well determined as s_1 / s_2 allows."""
    torch.manual_seed(0)
    f = WideConvDecoder().eval().to(DEVICE)
    z = latents(6, 128)
    ref, v_ref = exact_top(f, z, K)
    exact = singular_values(f, z)[:, :K].cpu()
    torch.testing.assert_close(exact, torch.tensor(ref), atol=1e-6, rtol=0)
    for iterations, tol_1, tol_k, tol_v in ((1, 0.01, 0.15, 0.02), (2, 1e-4, 0.01, 1e-4)):
        s, v = (t.cpu() for t in top_singular_values_and_vector(f, z, K, iterations=iterations))
        err = np.abs(s.numpy() - ref) / ref
        assert (s.numpy() <= ref * (1 + 1e-5)).all()
        assert err[:, 0].max() <= tol_1 and err.max() <= tol_k, iterations
        assert (1 - np.abs((v.numpy() * v_ref).sum(-1))).max() <= tol_v, iterations


def test_chunked_equals_unchunked(conv_decoder):
    conv_decoder.to(DEVICE)
    z = latents(7, 6)
    whole = top_singular_values_and_vector(conv_decoder, z, 3, oversample=1)
    for chunk_size in (1, 3):
        got = top_singular_values_and_vector(
            conv_decoder, z, 3, oversample=1, chunk_size=chunk_size
        )
        for a, b in zip(got, whole, strict=True):  # float32 products: batch-size round-off
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_same_draws_at_every_call_and_never_the_global_rng(conv_decoder):
    conv_decoder.to(DEVICE)
    z = latents(4, 6)
    states = rng_states()
    first = top_singular_values(conv_decoder, z, 2, oversample=1, iterations=0)
    assert same_rng_states(states, rng_states())
    torch.manual_seed(123)  # the global RNG does not enter
    assert torch.equal(top_singular_values(conv_decoder, z, 2, oversample=1, iterations=0), first)
    # a generator of one's own is used, and advanced: two calls draw two start blocks
    generator = torch.Generator().manual_seed(5)
    a = top_singular_values(conv_decoder, z, 2, oversample=1, iterations=0, generator=generator)
    b = top_singular_values(conv_decoder, z, 2, oversample=1, iterations=0, generator=generator)
    assert not torch.equal(a, b) and not torch.equal(a, first)
    same = top_singular_values(
        conv_decoder, z, 2, oversample=1, iterations=0, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(same, a)


@pytest.mark.parametrize("training", [True, False])
def test_grad_modes_grads_and_mode_untouched(conv_decoder, training):
    conv_decoder.train(training).to(DEVICE)
    z = latents(5, 6).requires_grad_(True)
    expected = top_singular_values_and_vector(conv_decoder, z, 4)
    with torch.no_grad():
        under_no_grad = top_singular_values_and_vector(conv_decoder, z, 4)
    with torch.inference_mode():
        under_inference = top_singular_values_and_vector(conv_decoder, z.detach().clone(), 4)
    for got in (under_no_grad, under_inference):
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not expected[0].requires_grad and z.grad is None
    assert all(p.grad is None for p in conv_decoder.parameters())
    assert all(mod.training == training for mod in conv_decoder.modules())


def test_dropout_in_train_mode_gives_products_of_one_jacobian():
    """Every jvp and vjp pass sees the same dropout mask, the one the exact path draws from
    the same RNG state: rank 6 < the Krylov basis, so the values are exact. The global RNG is
    left where it was."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 6), nn.Dropout(0.5), nn.Linear(6, 40)).train().to(DEVICE)
    z = latents(3, 64)
    torch.manual_seed(7)
    exact = singular_values(net, z, chunk_size=3)[:, :3]  # no probe pass before the mask
    torch.manual_seed(7)
    states = rng_states()
    got = top_singular_values(net, z, 3, oversample=2)
    assert same_rng_states(states, rng_states())
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-6)


def test_non_finite_outputs_give_nan_rows_only_there(tanh_mlp):
    tanh_mlp.to(DEVICE)

    def decoder(z):
        return torch.relu(torch.where(z[:, :1] < 0, torch.nan, tanh_mlp(z)))

    z = torch.randn(8, 5)
    z[:, 0] = torch.linspace(-1.0, 1.0, 8)
    z = z.to(DEVICE)
    bad = z[:, 0] < 0
    s, v = top_singular_values_and_vector(decoder, z, 2, chunk_size=3)
    assert torch.isnan(s[bad]).all() and torch.isnan(v[bad]).all()
    assert torch.isfinite(s[~bad]).all() and torch.isfinite(v[~bad]).all()
    torch.testing.assert_close(s[~bad], top_singular_values(decoder, z[~bad], 2))
    assert (intrinsic_dim(s)[bad] == -1).all()
    for descriptor in (local_scaling, local_rank, log_condition):
        assert torch.isnan(descriptor(s)[bad]).all()


def test_singular_values_top_k_is_the_top_k_path(conv_decoder):
    conv_decoder.to(DEVICE)
    z = latents(4, 6)
    torch.testing.assert_close(
        singular_values(conv_decoder, z, top_k=3), top_singular_values(conv_decoder, z, 3)
    )
    # k + oversample >= m: the start block spans R^m and the values are the exact ones
    torch.testing.assert_close(
        singular_values(conv_decoder, z, top_k=3), singular_values(conv_decoder, z)[:, :3]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "top_k"),
        ({"k": 7}, "latent size m = 6"),
        ({"k": 2, "oversample": -1}, "oversample"),
        ({"k": 2, "iterations": -1}, "iterations"),
        ({"k": 2, "chunk_size": 0}, "chunk_size"),
        ({"k": 2, "generator": 3}, "generator"),
    ],
)
def test_bad_arguments_are_rejected(conv_decoder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        top_singular_values(conv_decoder.to(DEVICE), latents(2, 6), **kwargs)


def test_top_k_above_the_output_size_and_empty_batches_are_rejected(tanh_mlp):
    wide = nn.Linear(20, 4).to(DEVICE)
    with pytest.raises(ValueError, match="output size n = 4"):
        top_singular_values(wide, latents(2, 20), 5)
    with pytest.raises(ValueError, match="empty batch"):
        top_singular_values(tanh_mlp.to(DEVICE), latents(0, 5), 2)


def test_basis_that_fills_the_latent_space_gives_the_exact_values():
    """m = 50, l = 30: the second block has only 20 new directions to take (the other 10 are
    round-off); K then spans R^m and the values are the exact ones, none above."""
    s = np.linspace(3.0, 0.5, 50)
    got = top_singular_values(spectrum_map(80, 50, s), latents(2, 50), 22)
    np.testing.assert_allclose(got.cpu().numpy(), np.broadcast_to(s[:22], (2, 22)), rtol=1e-5)
