"""``functional.jacobian`` against float64 references built column by column in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_memwatch.functional import jacobian
from tests.conftest import finite_difference_jacobian, linear_map


@pytest.mark.parametrize(("n", "m"), [(7, 2), (40, 16), (3, 8)])
def test_linear_map_jacobian_is_the_matrix(n, m, rng):
    a = linear_map(n, m, np.linspace(2.0, 0.5, min(n, m)), rng)
    a32 = torch.tensor(a, dtype=torch.float32)
    z = torch.randn(5, m)
    jac = jacobian(lambda x: x @ a32.T, z)
    assert jac.shape == (5, n, m)
    np.testing.assert_array_equal(jac.numpy(), np.broadcast_to(a32.numpy(), (5, n, m)))


def test_mlp_matches_float64_reference(tanh_mlp):
    z = torch.randn(9, 5)
    jac = jacobian(tanh_mlp, z)
    ref = finite_difference_jacobian(tanh_mlp, z)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(jac.numpy(), ref, rtol=0, atol=1e-5 * scale)


def test_conv_decoder_images_are_flattened(conv_decoder):
    z = torch.randn(4, 6)
    jac = jacobian(conv_decoder, z)
    assert jac.shape == (4, 64, 6)
    ref = finite_difference_jacobian(conv_decoder, z)
    np.testing.assert_allclose(jac.numpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("chunk_size", [1, 3, 7])
def test_chunked_equals_unchunked(tanh_mlp, chunk_size):
    z = torch.randn(10, 5)
    torch.testing.assert_close(jacobian(tanh_mlp, z, chunk_size=chunk_size), jacobian(tanh_mlp, z))


def test_grad_modes_give_the_same_values(tanh_mlp):
    z = torch.randn(6, 5)
    expected = jacobian(tanh_mlp, z)
    with torch.no_grad():
        under_no_grad = jacobian(tanh_mlp, z)
    with torch.inference_mode():
        z_inference = z.clone()  # an inference tensor, as trainer.validate would hand over
        under_inference = jacobian(tanh_mlp, z_inference)
    torch.testing.assert_close(under_no_grad, expected, rtol=0, atol=0)
    torch.testing.assert_close(under_inference, expected, rtol=0, atol=0)
    assert expected.abs().sum() > 0


@pytest.mark.parametrize("training", [True, False])
def test_leaves_grads_and_mode_untouched(tanh_mlp, training):
    tanh_mlp.train(training)
    z = torch.randn(4, 5, requires_grad=True)
    jac = jacobian(tanh_mlp, z)
    assert not jac.requires_grad
    assert all(p.grad is None for p in tanh_mlp.parameters())
    assert z.grad is None
    assert all(mod.training == training for mod in tanh_mlp.modules())


def test_dropout_in_train_mode_gives_one_consistent_jacobian():
    """A stochastic decoder: every column uses the same dropout mask (``randomness='same'``)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Dropout(0.5), torch.nn.Linear(6, 10))
    net.train()
    z = torch.randn(3, 8)
    jac = jacobian(net, z).double()
    w1, w2 = net[0].weight.detach().double(), net[2].weight.detach().double()
    # Each point's Jacobian is w2 diag(d) w1 for one mask d in {0, 2}^6 (80 equations, 6 unknowns).
    basis = torch.einsum("oh,hi->oih", w2, w1).reshape(-1, 6)
    for point in jac:
        d = torch.linalg.lstsq(basis, point.reshape(-1, 1)).solution.squeeze(1)
        assert torch.isin(d.round(decimals=4), torch.tensor([0.0, 2.0], dtype=d.dtype)).all(), d
        torch.testing.assert_close(basis @ d, point.reshape(-1), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("z", "message"),
    [(torch.randn(5), "(B, m) latent batch"), (torch.zeros(3, 2, dtype=torch.int64), "floating")],
)
def test_bad_latents_are_rejected(tanh_mlp, z, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        jacobian(tanh_mlp, z)


def test_bad_chunk_size_is_rejected(tanh_mlp):
    with pytest.raises(ValueError, match="chunk_size"):
        jacobian(tanh_mlp, torch.randn(3, 5), chunk_size=0)


def test_non_finite_outputs_give_nan_jacobians(tanh_mlp):
    """``relu`` of a NaN has a finite derivative, so forward mode alone would report the net's
    Jacobian at a point whose output is NaN; the point gets an all-NaN Jacobian instead."""

    def decoder(z):
        return torch.relu(torch.where(z[:, :1] < 0, torch.nan, tanh_mlp(z)))

    z = torch.randn(6, 5)
    z[:, 0] = torch.tensor([-1.0, 0.5, -0.2, 0.3, 0.7, -2.0])
    bad = z[:, 0] < 0
    jac = jacobian(decoder, z, chunk_size=4)
    assert torch.isnan(jac[bad]).all()
    torch.testing.assert_close(jac[~bad], jacobian(decoder, z[~bad]))
    assert torch.isfinite(jac[~bad]).all()
