"""lp profiles along a path and a line, against closed forms of a linear map (float64)."""

from __future__ import annotations

import numpy as np
import torch

from lightning_memwatch.functional.profiles import line_profile, path_profile
from tests.conftest import linear_map
from tests.devices import DEVICE


def log_normal(z: np.ndarray) -> np.ndarray:
    return -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * np.log(2 * np.pi)


def test_profiles_of_a_linear_map(rng):
    """f(z) = A z: psi = sum log s is constant; along z0 -> z1 the arclength grows linearly to
    |A (z1 - z0)|; along z + t v_1 it is s_1 t (v_1 a unit vector)."""
    s = np.array([3.0, 1.5, 0.5])
    a = torch.tensor(linear_map(10, 3, s, rng))
    on_device = a.to(DEVICE)
    f = lambda z: z @ on_device.T  # noqa: E731
    z0, z1 = torch.tensor(rng.standard_normal(3)), torch.tensor(rng.standard_normal(3))

    arc, lp, points = (t.cpu() for t in path_profile(f, z0.to(DEVICE), z1.to(DEVICE), steps=9))
    t = np.linspace(0.0, 1.0, 9)
    np.testing.assert_allclose(
        points.numpy(), (1 - t)[:, None] * z0.numpy() + t[:, None] * z1.numpy()
    )
    np.testing.assert_allclose(
        arc.numpy(), t * np.linalg.norm(a.numpy() @ (z1 - z0).numpy()), rtol=1e-10
    )
    np.testing.assert_allclose(lp.numpy(), log_normal(points.numpy()) - np.log(s).sum(), rtol=1e-10)

    signed, lp_line = (t.cpu() for t in line_profile(f, z0.to(DEVICE), half_width=1.0, steps=11))
    t = np.linspace(-1.0, 1.0, 11)
    np.testing.assert_allclose(signed.numpy(), 3.0 * t, atol=1e-10)
    v = np.linalg.svd(a.numpy())[2][0]
    on_line = z0.numpy() + t[:, None] * v * np.sign(v[np.abs(v).argmax()])
    np.testing.assert_allclose(lp_line.numpy(), log_normal(on_line) - np.log(s).sum(), rtol=1e-10)
