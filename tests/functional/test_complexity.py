"""local_complexity against exact hyperplane counts (one hidden layer) and dense numpy sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lightning_memwatch.functional import complexity as complexity_module
from lightning_memwatch.functional import local_complexity
from lightning_memwatch.functional.complexity import ball_points, l1_ball_offsets
from tests.devices import DEVICE, rng_states, same_rng_states


def shallow(w: np.ndarray, b: np.ndarray, activation: nn.Module) -> nn.Sequential:
    """``z -> activation(w z + b) -> sum``, float64, with the hyperplanes ``w_j . z + b_j = 0``,
    on the test device."""
    net = nn.Sequential(nn.Linear(w.shape[1], w.shape[0]), activation, nn.Linear(w.shape[0], 3))
    net = net.double().to(DEVICE)
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w))
        net[0].bias.copy_(torch.from_numpy(b))
    return net


def cut_count(w: np.ndarray, b: np.ndarray, z0: np.ndarray, r: float, knots=(0.0,)) -> np.ndarray:
    """Exact: the hyperplane ``w.z + b = k`` cuts the open l1 ball iff ``|w.z0 + b - k| < r max|w|``
    (a linear function's extremes over the ball are ``w.z0 + b +- r max_i |w_i|``)."""
    pre = z0 @ w.T + b  # (B, H)
    reach = r * np.abs(w).max(axis=1)
    return sum((np.abs(pre - k) < reach).sum(axis=1) for k in knots)


def margin(w, b, z0, r, knots=(0.0,)) -> float:
    """Smallest distance of ``|w.z0 + b - k|`` from the cut threshold: keeps the test off ties."""
    pre, reach = z0 @ w.T + b, r * np.abs(w).max(axis=1)
    return min(np.abs(np.abs(pre - k) - reach).min() for k in knots)


@pytest.fixture
def plane_setup(rng):
    m, hidden, batch, r = 3, 12, 40, 0.4
    w = rng.standard_normal((hidden, m))
    b = rng.standard_normal(hidden)
    z0 = rng.standard_normal((batch, m))
    assert margin(w, b, z0, r) > 1e-6
    return w, b, z0, r


@pytest.mark.parametrize("num_samples", [0, 64])
@pytest.mark.parametrize(
    "activation", [nn.ReLU(), nn.ReLU(inplace=True), nn.LeakyReLU(0.2), nn.PReLU()]
)
def test_one_hidden_layer_counts_the_hyperplanes_that_cut_the_ball(
    plane_setup, activation, num_samples
):
    w, b, z0, r = plane_setup
    net = shallow(w, b, activation)
    got = local_complexity(net, torch.from_numpy(z0).to(DEVICE), radius=r, num_samples=num_samples)
    expected = cut_count(w, b, z0, r)
    assert got.dtype == torch.float64 and got.device == DEVICE
    np.testing.assert_array_equal(got.cpu().numpy(), expected)
    assert 0 < expected.min() < expected.max()  # the balls differ: the test can fail


def test_hardtanh_and_relu6_count_both_knots(rng):
    m, hidden, batch, r = 2, 10, 30, 0.5
    w, b = 2 * rng.standard_normal((hidden, m)), 3 * rng.standard_normal(hidden)
    z0 = 2 * rng.standard_normal((batch, m))
    for activation, knots in ((nn.ReLU6(), (0.0, 6.0)), (nn.Hardtanh(-1.0, 2.0), (-1.0, 2.0))):
        assert margin(w, b, z0, r, knots) > 1e-6
        got = local_complexity(shallow(w, b, activation), torch.from_numpy(z0).to(DEVICE), radius=r)
        expected = cut_count(w, b, z0, r, knots)
        np.testing.assert_array_equal(got.cpu().numpy(), expected)
        assert (cut_count(w, b, z0, r, knots[1:]) > 0).any()  # the second knot matters


def test_float32_module_and_latents(plane_setup):
    w, b, z0, r = plane_setup
    net = shallow(w, b, nn.ReLU()).float()
    ok = np.abs(np.abs(z0 @ w.T + b) - r * np.abs(w).max(axis=1)).min(axis=1) > 1e-3
    got = local_complexity(net, torch.from_numpy(z0).float().to(DEVICE), radius=r)
    np.testing.assert_array_equal(got.cpu().numpy()[ok], cut_count(w, b, z0, r)[ok])
    assert ok.sum() > 30


def test_zero_inside_one_region_and_positive_once_the_ball_reaches_a_boundary():
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([0.0, 0.0, -3.0])  # z_1 = 0, z_2 = 0, z_1 + z_2 = 3
    net = shallow(w, b, nn.ReLU())
    z0 = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # distances (l_inf-dual): 1, 1, 1
    for r, expected in ((0.5, 0), (0.99, 0), (1.01, 3)):
        assert local_complexity(net, z0.to(DEVICE), radius=r, num_samples=256).item() == expected
        assert cut_count(w, b, z0.numpy(), r)[0] == expected


def test_batched_equals_per_point_and_chunking_does_not_matter(monkeypatch, rng):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.LeakyReLU(0.1))
    net = net.append(nn.Linear(16, 5)).double().to(DEVICE)
    z = torch.from_numpy(rng.standard_normal((9, 3))).to(DEVICE)
    options = {"radius": 0.5, "num_samples": 32}
    whole = local_complexity(net, z, generator=torch.Generator().manual_seed(3), **options)
    # each ball's count from its own points (the same draws, made on the CPU), in numpy
    offsets = l1_ball_offsets(9, 32, 3, generator=torch.Generator().manual_seed(3))
    points = ball_points(z.cpu(), 0.5, offsets).numpy()
    for i in range(9):
        pres = numpy_mlp_preactivations(net, points[i])
        assert whole[i].item() == sum(((p > 0).any(0) & (p < 0).any(0)).sum() for p in pres)
    assert whole.sum() > 0
    # vertices only (no random draws): the batch equals one call per point
    vertices = local_complexity(net, z, radius=0.5, num_samples=0)
    for i in range(9):
        alone = local_complexity(net, z[i : i + 1], radius=0.5, num_samples=0)
        assert alone.item() == vertices[i].item()
    for chunk_points in (1, 70, 200, 10**6):  # one ball per chunk .. all in one
        monkeypatch.setattr(complexity_module, "MAX_CHUNK_POINTS", chunk_points)
        again = local_complexity(net, z, generator=torch.Generator().manual_seed(3), **options)
        assert torch.equal(again, whole)


def numpy_mlp_preactivations(net: nn.Sequential, points: np.ndarray) -> list[np.ndarray]:
    """Float64 numpy forward of a Linear / (leaky) ReLU stack: each hidden pre-activation."""
    pres, h = [], points
    layers = list(net)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().double().cpu().numpy()
            bias = layer.bias.detach().double().cpu().numpy()
            h = h @ w.T + bias
            if i + 1 < len(layers):
                pres.append(h)
        else:
            slope = getattr(layer, "negative_slope", 0.0)
            h = np.where(h > 0, h, slope * h)
    return pres


def dense_reference(net: nn.Sequential, z0: np.ndarray, r: float, steps: int) -> np.ndarray:
    """Sign changes over a fine grid of the 2-D l1 ball (spacing r / steps) plus its vertices."""
    grid = np.linspace(-r, r, 2 * steps + 1)
    offsets = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    offsets = offsets[np.abs(offsets).sum(1) < r]
    offsets = np.concatenate([offsets, r * np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])])
    counts = []
    for centre in z0:
        pres = numpy_mlp_preactivations(net, centre + offsets)
        counts.append(sum(((p > 0).any(0) & (p < 0).any(0)).sum() for p in pres))
    return np.array(counts)


def test_deeper_counts_are_lower_bounds_that_reach_dense_sampling(rng):
    """Three ReLU layers, 2-D latents: a dense float64 grid is the reference; the vertices miss
    boundaries that bend inside the ball, random points find them as ``num_samples`` grows."""
    torch.manual_seed(1)
    layers = [nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    net = net.to(DEVICE)
    z0 = rng.standard_normal((16, 2))
    r = 1.0
    reference = dense_reference(net, z0, r, steps=100)
    z = torch.from_numpy(z0).to(DEVICE)
    means = []
    for num_samples in (0, 16, 256, 4096):
        got = (
            local_complexity(
                net,
                z,
                radius=r,
                num_samples=num_samples,
                generator=torch.Generator().manual_seed(0),
            )
            .cpu()
            .numpy()
        )
        assert (got <= reference).all(), num_samples
        means.append(got.mean())
    assert means == sorted(means)
    assert means[0] < means[-1]  # the vertices alone miss deeper boundaries here
    np.testing.assert_array_equal(got, reference)
    # the first hidden layer alone is exact from the vertices
    first = nn.Sequential(net[0], net[1])
    layer1 = local_complexity(first, z, radius=r, num_samples=0).cpu().numpy()
    w, b = net[0].weight.detach().cpu().numpy(), net[0].bias.detach().cpu().numpy()
    np.testing.assert_array_equal(layer1, cut_count(w, b, z0, r))


def test_conv_pre_activations_are_counted_per_element(rng):
    """Linear -> reshape -> ConvTranspose2d is affine in z: its ReLU's boundaries are exact."""
    torch.manual_seed(0)

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2 * 3 * 3)
            self.up = nn.ConvTranspose2d(2, 2, kernel_size=3, stride=2)
            self.act = nn.ReLU()

        def affine(self, z):
            return self.up(self.fc(z).reshape(-1, 2, 3, 3))

        def forward(self, z):
            return self.act(self.affine(z)).flatten(1)

    net = Conv().double()
    z0 = rng.standard_normal((20, 3))
    with torch.no_grad():  # the affine map's matrix and offset, from basis vectors, on the CPU
        b = net.affine(torch.zeros(1, 3, dtype=torch.float64)).flatten().numpy()
        w = (net.affine(torch.eye(3, dtype=torch.float64)).flatten(1).numpy() - b).T
    r = 0.3
    assert margin(w, b, z0, r) > 1e-6
    got = local_complexity(net.to(DEVICE), torch.from_numpy(z0).to(DEVICE), radius=r)
    np.testing.assert_array_equal(got.cpu().numpy(), cut_count(w, b, z0, r))
    assert got.max() > 0


def test_uniform_samples_in_the_l1_ball():
    """``||u||_1 <= t`` has probability ``t^m``; ``|u_1| <= t`` has ``1 - (1 - t)^m``."""
    m = 4
    generator = torch.Generator(device=DEVICE).manual_seed(0)  # drawn on the test device
    u = l1_ball_offsets(1, 4000, m, generator=generator)[0].cpu().numpy()
    norm = np.abs(u).sum(1)
    assert norm.max() < 1
    assert stats.kstest(norm, lambda t: np.clip(t, 0, 1) ** m).pvalue > 0.01
    assert stats.kstest(np.abs(u[:, 0]), lambda t: 1 - (1 - np.clip(t, 0, 1)) ** m).pvalue > 0.01
    assert stats.binomtest(int((u > 0).sum()), u.size).pvalue > 0.01
    # a distribution that is not uniform (e.g. normalised exponentials without the extra term,
    # which lie on the sphere) is rejected by the same test
    assert stats.kstest(np.ones(100), lambda t: np.clip(t, 0, 1) ** m).pvalue < 0.01


def test_ball_points_are_the_vertices_then_the_samples():
    z = torch.tensor([[1.0, -2.0]], device=DEVICE)
    offsets = torch.tensor([[[0.25, -0.5]]], dtype=torch.float64, device=DEVICE)
    points = ball_points(z, 0.5, offsets)[0]
    expected = [[1.5, -2.0], [1.0, -1.5], [0.5, -2.0], [1.0, -2.5], [1.125, -2.25]]
    assert torch.equal(points.cpu(), torch.tensor(expected))


def test_generator_reproducible_global_rng_untouched_module_unchanged(rng):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    net.train().to(DEVICE)
    net[2].eval()
    modes = [m.training for m in net.modules()]
    z = torch.from_numpy(rng.standard_normal((6, 3))).float().to(DEVICE)
    states = rng_states()
    a = local_complexity(net, z, radius=0.7, generator=torch.Generator().manual_seed(5))
    b = local_complexity(net, z, radius=0.7, generator=torch.Generator().manual_seed(5))
    c = local_complexity(net, z, radius=0.7)  # None: seeded 0, deterministic
    d = local_complexity(net, z, radius=0.7)
    assert torch.equal(a, b) and torch.equal(c, d)
    assert same_rng_states(states, rng_states())
    assert [m.training for m in net.modules()] == modes
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    with torch.inference_mode():
        assert torch.equal(local_complexity(net, z, radius=0.7), c)
    with torch.no_grad():
        assert torch.equal(local_complexity(net, z, radius=0.7), c)
    for module in net.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_hooks_are_removed_when_the_forward_raises():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(2, 4), nn.ReLU()

        def forward(self, z):
            self.act(self.fc(z))
            raise RuntimeError("boom")

    net = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        local_complexity(net, torch.zeros(2, 2), radius=0.1)
    assert not net.act._forward_pre_hooks


def test_a_bound_method_counts_only_the_activations_it_runs():
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            self.decoder = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4))

        def decode(self, z):
            return self.decoder(z)

    model = Model().double().to(DEVICE)
    z = torch.randn(10, 2, dtype=torch.float64).to(DEVICE)
    via_method = local_complexity(model.decode, z, radius=1.0)
    assert torch.equal(via_method, local_complexity(model.decoder, z, radius=1.0))
    assert via_method.sum() > 0


def test_nan_pre_activations_give_nan_for_that_ball_only():
    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(2, 4), nn.ReLU()

        def forward(self, z):
            h = self.fc(z)
            return self.act(torch.where(z[:, :1] > 10, torch.nan, h))

    z = torch.tensor([[0.0, 0.0], [20.0, 0.0]], device=DEVICE)
    got = local_complexity(Half().to(DEVICE), z, radius=0.1)
    assert torch.isfinite(got[0]) and torch.isnan(got[1])


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.unused = nn.Linear(2, 3), nn.ReLU()

    def forward(self, z):
        return torch.relu(self.fc(z))


@pytest.mark.parametrize(
    ("module", "kwargs", "match"),
    [
        (nn.Sequential(nn.Linear(2, 3), nn.Tanh()), {}, r"nn\.ReLU, nn\.LeakyReLU.*F\.relu"),
        (nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(1.0)), {}, "piecewise-linear"),
        (FunctionalRelu(), {}, "none ran"),
        (lambda z: z, {}, "nn.Module or a bound method"),
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU()), {"radius": 0.0}, "radius"),
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU()), {"radius": float("nan")}, "radius"),
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU()), {"radius": True}, "radius"),
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU()), {"num_samples": -1}, "num_samples"),
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU()), {"num_samples": 2.0}, "num_samples"),
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU()), {"generator": 0}, "generator"),
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU()), {"z": torch.zeros(2)}, "latent batch"),
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU()), {"z": torch.zeros(2, 2).long()}, "floating"),
    ],
)
def test_errors(module, kwargs, match):
    z = kwargs.pop("z", torch.zeros(3, 2))
    options = {"radius": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        local_complexity(module, z, **options)
