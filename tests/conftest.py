"""Shared fixtures: small decoders with known structure and float64 reference computations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn


def random_orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def linear_map(n: int, m: int, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``A = U diag(s) V^T`` (n x m) with random orthogonal U, V and chosen singular values s."""
    u = random_orthogonal(n, rng)[:, : len(s)]
    v = random_orthogonal(m, rng)[:, : len(s)]
    return (u * s) @ v.T


class TanhMLP(nn.Module):
    """A small smooth decoder ``R^m -> R^n``."""

    def __init__(self, m: int = 5, n: int = 12, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(m, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, n),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ConvDecoder(nn.Module):
    """A small smooth conv decoder ``R^m -> (1, 8, 8)`` images."""

    def __init__(self, m: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(m, 8 * 4 * 4)
        self.up = nn.ConvTranspose2d(8, 4, kernel_size=4, stride=2, padding=1)
        self.out = nn.Conv2d(4, 1, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(z)).reshape(-1, 8, 4, 4)
        return self.out(torch.tanh(self.up(h)))


def finite_difference_jacobian(module: nn.Module, z: torch.Tensor, h: float = 1e-5) -> np.ndarray:
    """Float64 reference Jacobian, column by column, by central differences on a float64 copy.

    Truncation error ``O(h^2) ~ 1e-10`` and rounding ``O(1e-16 / h) ~ 1e-11``: far below the
    float32 error of the method under test.
    """
    ref = copy.deepcopy(module).double().eval()
    z64 = z.detach().double()
    cols = []
    with torch.no_grad():
        for j in range(z64.shape[1]):
            step = torch.zeros_like(z64)
            step[:, j] = h
            diff = ref(z64 + step).reshape(len(z64), -1) - ref(z64 - step).reshape(len(z64), -1)
            cols.append((diff / (2 * h)).numpy())
    return np.stack(cols, axis=-1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def tanh_mlp() -> TanhMLP:
    torch.manual_seed(0)
    return TanhMLP()


@pytest.fixture
def conv_decoder() -> ConvDecoder:
    torch.manual_seed(0)
    return ConvDecoder()
