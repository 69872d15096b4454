"""What a ``DiffusionMonitor`` measurement costs, priced before it is paid.

The budget (:mod:`~lightning_memwatch.callbacks.machinery.budget`) prices a family's work with
calls of the model timed when training starts (:func:`~lightning_memwatch.callbacks.machinery.
costs.time_units`). For a diffusion model the timed "decoder" is the denoiser at a spectrum
timestep on the directions the spectrum family differentiates: ``u -> denoiser(x_t + Q u, t)``
with ``u`` of the spectrum's ``k`` dimensions (``Q`` the projection, the identity without one),
so that one timed Jacobian is the spectrum family's Jacobian at a point, and one timed forward
pass of ``rows`` points is the loss family's pass of ``rows`` noised samples. Per family, on
``size`` probe samples per split:

- ``loss``: a forward pass of each probe sample at each of the ``K`` grid timesteps, in both
  splits: ``2 K size`` rows;
- ``spectrum``: a Jacobian at each probe point at each spectrum timestep, in both splits;
- ``samples``: the DDIM sampler's ``sampler_steps`` forward passes of the generated samples
  (``ceil(num_generated size / probe)``) and their distances to the reference.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_memwatch.callbacks.machinery.costs import (
    OTHER_FAMILY_OPS,
    TIMED_ROWS,
    UnitCosts,
    Work,
    time_units,
)
from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.functional.diffusion import timestep_batch


def diffusion_work(monitor: Any, family: str, size: int) -> Work:
    """The denoiser work of ``family`` (``"diffusion/<name>"``) on ``size`` samples a split."""
    name = family.removeprefix("diffusion/")
    if name == "loss":
        calls = 2 * len(monitor.loss_grid)
        return Work(forward_calls=calls, forward_rows=calls * size, fixed_ops=OTHER_FAMILY_OPS)
    if name == "spectrum":
        calls = 2 * len(monitor.spectrum_grid)
        return Work(jacobian_calls=calls, jacobian_points=calls * size, fixed_ops=OTHER_FAMILY_OPS)
    count = math.ceil(monitor.num_generated * size / max(monitor.effective_probe_size, 1))
    steps = monitor.sampler_steps
    return Work(forward_calls=steps, forward_rows=steps * count, fixed_ops=OTHER_FAMILY_OPS)


def time_denoiser(monitor: Any, pl_module: Any) -> UnitCosts:
    """Time the denoiser as the families call it (module docstring), on up to
    :data:`~lightning_memwatch.callbacks.machinery.costs.TIMED_ROWS` training probe samples
    noised to the first spectrum timestep, in the measurement context."""
    device = pl_module.device
    x = monitor.inputs["train"][:TIMED_ROWS].to(device)
    t = monitor.spectrum_grid[0]
    abar = monitor.schedule.alphas_cumprod.to(device, x.dtype)[t]
    x_t = abar.sqrt() * x  # the noise does not change the cost
    q = None if monitor.projection is None else monitor.projection.to(device, x.dtype)
    call = monitor.call
    if monitor.labels is not None:
        call = call.with_labels(int(monitor.labels["train"][0]))

    def denoise(u: Tensor) -> Tensor:
        step = u if q is None else u @ q.T  # Q u: the directions the spectrum differentiates
        points = x_t[: len(u)].flatten(1) + step
        return call(points.reshape(len(u), *x.shape[1:]), timestep_batch(t, len(u), device))

    dim = x[0].numel() if q is None else q.shape[1]
    u = torch.zeros(len(x), dim, dtype=x.dtype, device=device)
    spectrum = any(f.endswith("/spectrum") for f in monitor.families)
    with measurement_context(pl_module, device):
        return time_units(denoise, u, forward_mode=spectrum, reverse_mode=False)
