"""Local complexity of a piecewise-linear generator: activation boundaries inside a small ball.

Humayun et al. (2024), sec. 2 ("Local complexity, delta"): for a continuous
piecewise-affine generator ``G`` (linear / convolution / pooling layers, ReLU or leaky-ReLU
activations) the latent space is partitioned into linear regions ``omega`` and

    ``delta_z = sum_{omega in V_z} 1_omega``,  ``V_z = {x : ||B x - B z||_1 < r}``,

the number of regions meeting an l1-ball of radius ``r`` around ``z``; the paper estimates it
"using the method described in (14)" (Humayun, Balestriero, Baraniuk, *Deep networks always
grok and here is why*, 2024), which counts the neurons whose boundary cuts the ball.

What :func:`local_complexity` computes, and how it differs from the paper:

- The count is of **activation boundaries**, not of regions: the number of (neuron, knot) pairs
  whose pre-activation minus the knot takes both signs over the ball (a ReLU or leaky ReLU has
  one knot at 0, so this is the number of neurons whose pre-activation changes sign; a hard tanh
  / ReLU6 has two). Every region boundary inside the ball is one of these, so the count grows
  with the number of regions (``k`` boundaries in general position in ``m`` dimensions make at
  most ``sum_{i <= m} C(k, i)`` regions) and is 0 exactly when the ball lies in one region.
- ``B`` is the identity: the ball is the plain l1 ball of the whole latent space (the paper uses a
  random orthonormal ``B`` onto a 20-dimensional subspace of Stable Diffusion's latents, with
  ``r = 1e-4``, Humayun et al. (2024), sec. 3).
- The sign pattern is read at ``2 m + S`` points of the ball: its ``2 m`` vertices
  ``z +- r e_i`` and ``S = num_samples`` points drawn uniformly inside it. For a neuron of the
  first hidden layer the pre-activation is affine in ``z``, so its extremes over the ball are at
  vertices and the count is exact; deeper pre-activations are piecewise affine, a boundary may
  cut the ball between the sampled points, so deeper counts are lower bounds that grow with
  ``num_samples``.

Uniform sampling in the l1 ball: with ``E_1 .. E_{m+1}`` i.i.d. ``Exp(1)``,
``(E_1 .. E_m) / sum_{j <= m+1} E_j`` is uniform on the simplex ``{u >= 0, sum u <= 1}``
(its ``m + 1`` normalised coordinates are Dirichlet(1, ..., 1)); independent random signs make
it uniform on the l1 unit ball, and ``z + r u`` uniform on ``V_z``.

Ties: a pre-activation exactly at a knot counts as neither side, so a boundary is counted only
when the ball has points strictly on both sides. This is the open ball of the paper (``< r``):
a hyperplane that only touches the closed ball at a vertex does not cut it, and a dead neuron
with zero weights and bias (pre-activation 0 everywhere) is never counted.

Only activation **modules** can be hooked (:data:`PIECEWISE_LINEAR`); ``torch.relu`` /
``F.relu`` / ``F.leaky_relu`` calls inside a ``forward`` are invisible, and max-pooling kinks
are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.jacobian import _check_latents

#: Activation modules whose kinks are counted: ReLU and leaky ReLU (knot 0), PReLU (knot 0),
#: Hardtanh and its subclass ReLU6 (knots ``min_val`` and ``max_val``).
PIECEWISE_LINEAR: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Hardtanh)

#: Points (balls times ``2 m + num_samples``) per forward pass; a chunk always holds whole balls
#: (at least one). The result does not depend on it: all random points are drawn first.
MAX_CHUNK_POINTS = 16384


def activation_knots(module: nn.Module) -> tuple[float, ...]:
    """Where ``module``'s activation bends: ``()`` if it is not a piecewise-linear activation
    of :data:`PIECEWISE_LINEAR` (or is linear: a leaky ReLU of slope 1)."""
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    if isinstance(module, nn.LeakyReLU) and module.negative_slope == 1:
        return ()
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.PReLU)):
        return (0.0,)
    return ()


def _owner(module: Any) -> nn.Module:
    """The ``nn.Module`` whose activations are hooked: ``module`` itself, or the owner of a bound
    method (e.g. ``lightning_module.decode``)."""
    if isinstance(module, nn.Module):
        return module
    owner = getattr(module, "__self__", None)
    if callable(module) and isinstance(owner, nn.Module):
        return owner
    raise ValueError(
        "Expected `module` to be an nn.Module or a bound method of one (its activation modules "
        f"are hooked) but got {type(module).__name__}"
    )


def piecewise_linear_activations(module: Any) -> list[tuple[nn.Module, tuple[float, ...]]]:
    """The activation modules of ``module`` (or of a bound method's owner) with their knots.

    Raises:
        ValueError: if there is none: names the classes looked for.
    """
    found = [(m, activation_knots(m)) for m in _owner(module).modules()]
    found = [(m, knots) for m, knots in found if knots]
    if not found:
        names = ", ".join(f"nn.{cls.__name__}" for cls in PIECEWISE_LINEAR)
        raise ValueError(
            f"Expected {type(_owner(module)).__name__} to contain piecewise-linear activation "
            f"modules ({names}, ReLU6 included) but it has none: local complexity counts their "
            "sign changes through forward hooks, so use activation modules (functional "
            "`torch.relu` / `F.relu` calls inside `forward` cannot be seen)"
        )
    return found


def check_radius(radius: Any, name: str = "radius") -> float:
    """``radius`` as a float; ``ValueError`` (naming ``name``) unless finite and positive."""
    if (
        isinstance(radius, bool)
        or not isinstance(radius, (int, float))
        or not math.isfinite(radius)
        or radius <= 0
    ):
        raise ValueError(f"Expected `{name}` to be a finite positive number but got {radius!r}")
    return float(radius)


def l1_ball_offsets(
    batch: int, num_samples: int, dim: int, *, generator: torch.Generator
) -> Tensor:
    """``(batch, num_samples, dim)`` float64 points uniform in the unit l1 ball of ``R^dim``.

    ``u = s * E_{1..m} / sum_{j <= m+1} E_j`` with ``E`` i.i.d. ``Exp(1)`` and ``s`` i.i.d.
    random signs, all drawn from ``generator`` on its device (see the module docstring).
    """
    opts = {"dtype": torch.float64, "device": generator.device}
    exps = torch.empty(batch, num_samples, dim + 1, **opts).exponential_(generator=generator)
    signs = torch.empty(batch, num_samples, dim, **opts).bernoulli_(0.5, generator=generator)
    return (2 * signs - 1) * exps[..., :dim] / exps.sum(dim=-1, keepdim=True)


def ball_points(z: Tensor, radius: float, offsets: Tensor) -> Tensor:
    """``(B, 2 m + S, m)``: the vertices ``z +- r e_i`` then ``z + r u_s`` (``offsets``
    ``(B, S, m)`` in the unit ball), in ``z``'s dtype."""
    batch, dim = z.shape
    eye = torch.eye(dim, dtype=torch.float64, device=z.device)
    unit = torch.cat([eye, -eye], dim=0).expand(batch, -1, -1)
    unit = torch.cat([unit, offsets.to(z.device)], dim=1)
    return (z.double()[:, None] + radius * unit).to(z.dtype)


def _boundary_counter(
    knots: tuple[float, ...], balls: int, state: dict[str, Any]
) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    """A forward pre-hook (it sees the pre-activation before an in-place activation overwrites
    it) adding, per ball, the (neuron, knot) pairs with both signs, and flagging NaN balls."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if not isinstance(x, Tensor) or x.ndim == 0 or x.shape[0] != state["points"]:
            raise ValueError(
                f"Expected the input of {type(module).__name__} to have the decoder's batch "
                f"first ({state['points']} points) but got "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            )
        pre = x.detach().reshape(balls, -1, *x.shape[1:]).flatten(2)  # (balls, points, neurons)
        for knot in knots:
            above, below = (pre > knot).any(dim=1), (pre < knot).any(dim=1)
            state["counts"] += (above & below).sum(dim=-1).to(state["counts"])
        state["nan"] |= pre.isnan().flatten(1).any(dim=1).to(state["nan"].device)
        state["fired"] += 1

    return hook


def local_complexity(
    module: nn.Module | Callable[[Tensor], Any],
    z: Tensor,
    *,
    radius: float,
    num_samples: int = 64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Activation boundaries of a piecewise-linear generator inside the l1 ball around each ``z``.

    Humayun et al. (2024), sec. 2, local complexity ``delta_z`` on
    ``V_z = {x : ||x - z||_1 < r}`` (``B = I``), estimated as the number of (neuron, knot) pairs
    whose pre-activation takes both signs (strictly) at the ball's ``2 m`` vertices and
    ``num_samples`` uniform points (method, ties and differences from the paper: module
    docstring). Exact for the first hidden layer; a lower bound deeper.

    All ``B (2 m + S)`` points go through ``module`` in chunks of whole balls
    (:data:`MAX_CHUNK_POINTS`) under ``torch.no_grad()``; forward pre-hooks on the
    :data:`PIECEWISE_LINEAR` activation modules read the pre-activations and are removed
    afterwards, even on an exception. The module's train/eval mode is not changed: pass it in
    eval mode (train-mode BatchNorm or dropout is not a fixed function of ``z``).

    Args:
        module: the generator, an ``nn.Module`` mapping ``(B, m)`` latents to outputs, or a bound
            method of one (``lightning_module.decode``): then the owner's activation modules are
            hooked and only those the method runs are counted.
        z: ball centres, ``(B, m)``.
        radius: l1 radius ``r > 0`` (latent units).
        num_samples: random points per ball, ``>= 0`` (0: vertices only).
        generator: draws the random points (never the global RNG); ``None``: a fresh generator
            seeded 0 on ``z``'s device, so the result is deterministic.

    Returns:
        ``(B,)`` float64 counts (whole numbers); NaN for a ball where a pre-activation was NaN.

    Raises:
        ValueError: no piecewise-linear activation module in ``module``, or none ran; a bad
            ``z``, ``radius`` or ``num_samples``.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> with torch.no_grad():  # hyperplanes z_1 = 0 and z_2 = 1
        ...     _ = net[0].weight.copy_(torch.eye(2)), net[0].bias.copy_(torch.tensor([0.0, -1.0]))
        >>> local_complexity(net, torch.tensor([[0.2, 0.0], [0.2, 0.9]]), radius=0.5)
        tensor([1., 2.], dtype=torch.float64)
    """
    activations = piecewise_linear_activations(module)
    _check_latents(z)
    r = check_radius(radius)
    check_int("num_samples", num_samples, minimum=0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"Expected `generator` to be a torch.Generator or None but got "
            f"{type(generator).__name__}"
        )
    if generator is None:
        generator = torch.Generator(device=z.device).manual_seed(0)
    batch, dim = z.shape
    centres = z.detach()
    offsets = l1_ball_offsets(batch, num_samples, dim, generator=generator)
    per_ball = 2 * dim + num_samples
    chunk = max(1, MAX_CHUNK_POINTS // per_ball)
    counts = torch.zeros(batch, dtype=torch.float64, device=z.device)
    fired = 0
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        points = ball_points(centres[start:stop], r, offsets[start:stop])
        state = {
            "counts": torch.zeros(stop - start, dtype=torch.float64, device=z.device),
            "nan": torch.zeros(stop - start, dtype=torch.bool, device=z.device),
            "fired": 0,
            "points": (stop - start) * per_ball,
        }
        handles = [
            act.register_forward_pre_hook(_boundary_counter(knots, stop - start, state))
            for act, knots in activations
        ]
        try:
            with torch.no_grad():
                module(points.reshape(-1, dim))
        finally:
            for handle in handles:
                handle.remove()
        counts[start:stop] = torch.where(state["nan"], torch.nan, state["counts"])
        fired += state["fired"]
    if batch and not fired:
        raise ValueError(
            f"Expected the generator to run at least one of its {len(activations)} "
            "piecewise-linear activation modules but none ran: local complexity needs the "
            "decoder's own activation modules (functional `torch.relu` / `F.relu` calls cannot "
            "be seen)"
        )
    return counts
