"""What a measurement will cost, predicted before it is paid.

A family's measurement is a known amount of decoder work on the probe slice (:class:`Work`):
plain forward passes, forward-mode Jacobians (``torch.func.jvp`` over the ``m`` latent
tangents), and forward + backward passes (latent recovery). Each monitor says how much of each
a family does on ``s`` samples per split (``MemwatchMonitor.work``); when training starts the
monitor times one call of each kind on its own decoder, at one latent and at a slice of latents
(:func:`time_units`), so that a family's seconds are predicted as
``sum over kinds of calls * per_call + rows * per_row`` plus, for what does not scale with the
decoder (Python, statistics, TensorBoard histograms), a count of small tensor operations
(:data:`FAMILY_OPS`) priced by one timed when training starts. The budget
(:mod:`~lightning_memwatch.callbacks.machinery.budget`) scales each family's prediction by
what its last measurement cost against its prediction.

Counted per sample ``s`` and split (the train and the validation slice), measured on the demo
VAE, a conv autoencoder and a conv VAE on 2 CPU cores (``benchmarks/overhead.py``):

- spectrum: one Jacobian per probe point and per prior draw: ``3 s`` points in 3 calls;
- density: the dip's path decode (17 points a path), the decay's coarse search along both
  directions of each line (``2 (32 + 1)`` points a segment, :data:`DECAY_SEGMENTS` segments on
  average) and its bisections (4 calls), and Jacobians at each path's midpoint and end and at
  each line end (``2 + 2 R`` a point, ``R`` radii);
- recovery: L-BFGS with a strong-Wolfe line search evaluates the loss and its gradient at most
  ``5/4`` times per iteration (``torch.optim.LBFGS``'s ``max_eval``), on every start in turn.

Also here: the one-off costs a process pays once (the first forward-mode call, matplotlib's
first figure), predicted where they are still to come.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.functional.jacobian import jacobian

#: Latents per split of the timed decoder calls (the budget's smallest slice).
TIMED_ROWS = 16

#: What a family's measurement costs besides its decoder calls (the many small tensor
#: operations of its Python code, the rolling table, means, KS p-values and effect bounds, its
#: TensorBoard histograms), in small tensor operations (:data:`OPS_PER_REFERENCE` timed when
#: training starts, so that the count follows the machine and its load), measured on the demo
#: VAE, whose decoder work is negligible.
FAMILY_OPS = {"spectrum": 8000.0, "density": 20000.0}
#: The same for a family without a count above.
OTHER_FAMILY_OPS = 5000.0
#: Small tensor operations of one L-BFGS iteration besides its decoder calls (line search,
#: two-loop recursion).
LBFGS_ITERATION_OPS = 900.0
#: Small tensor operations in the timed reference loop.
OPS_PER_REFERENCE = 64
#: Seconds of one measurement outside its families: logging its keys and the isolation
#: context, per logged key (measured 0.5-1.6 ms a key for ``pl_module.log`` on 2 cores).
KEY_SECONDS = 1e-3
#: The first ``torch.func.jvp`` of a process imports and scripts torch's forward-mode
#: decompositions (``torch._decomp.decompositions_for_jvp``): 0.3 s on 2 quiet cores.
JVP_WARMUP_SECONDS = 0.3
#: A family's matplotlib figures before one was timed (0.34-0.52 s on the demo VAE), and the
#: first figure of a process (importing matplotlib) on top.
FIGURE_SECONDS, FIGURE_WARMUP_SECONDS = 0.5, 0.5
#: Segments of the decay's coarse search per line, on average (the first ``[0, 4]`` reaches
#: the radii on most lines; flat lines search on).
DECAY_SEGMENTS = 1.5
#: Points per dip path, coarse steps per decay segment and bisections (functional defaults).
PATH_STEPS, COARSE_STEPS, BISECTIONS = 17, 32, 4
#: Loss-and-gradient evaluations per L-BFGS iteration at most (``max_eval = 5/4 max_iter``).
EVALS_PER_STEP = 1.25
#: Families that differentiate the decoder in forward mode (they pay the first jvp's cost).
FORWARD_MODE_FAMILIES = ("spectrum", "density")


@dataclass(frozen=True)
class Work:
    """Decoder work of one measurement: calls and rows (latent points) of each kind."""

    forward_calls: float = 0.0
    forward_rows: float = 0.0
    jacobian_calls: float = 0.0
    jacobian_points: float = 0.0
    gradient_calls: float = 0.0
    gradient_rows: float = 0.0
    #: small tensor operations besides the decoder calls
    fixed_ops: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __mul__(self, factor: float) -> Work:
        return Work(*(getattr(self, f.name) * factor for f in fields(self)))

    __rmul__ = __mul__


@dataclass(frozen=True)
class UnitCosts:
    """Seconds of one decoder call of each kind, ``(per call, per row)``: ``forward`` without
    gradients, ``jacobian`` the full forward-mode Jacobian of a point (``m`` tangents; a call
    includes the forward of one point that sizes its chunks),
    ``gradient`` a forward and backward pass; ``op`` the seconds of one small tensor operation
    on this machine now. A kind not timed costs nothing."""

    forward: tuple[float, float]
    jacobian: tuple[float, float] = (0.0, 0.0)
    gradient: tuple[float, float] = (0.0, 0.0)
    op: float = 0.0

    def seconds(self, work: Work) -> float:
        """Predicted seconds of ``work``.

        Example::

            >>> units = UnitCosts(forward=(1e-3, 1e-4), gradient=(2e-3, 3e-4), op=1e-5)
            >>> round(units.seconds(Work(forward_calls=2, forward_rows=10, gradient_calls=1,
            ...                          gradient_rows=16, fixed_ops=100)), 6)
            0.0108
        """
        return (
            work.fixed_ops * self.op
            + work.forward_calls * self.forward[0]
            + work.forward_rows * self.forward[1]
            + work.jacobian_calls * self.jacobian[0]
            + work.jacobian_points * self.jacobian[1]
            + work.gradient_calls * self.gradient[0]
            + work.gradient_rows * self.gradient[1]
        )

    def forward_seconds(self, rows: int) -> float:
        """One forward pass of ``rows`` latents: what a "forward-equivalent" is."""
        return self.forward[0] + rows * self.forward[1]


def spectrum_work(size: int) -> Work:
    """The spectrum family on ``size`` samples per split: a Jacobian at each train and
    validation probe point and at as many prior draws, one call each."""
    return Work(
        jacobian_calls=3,
        jacobian_points=3 * size,
        fixed_ops=FAMILY_OPS["spectrum"],
    )


def density_work(size: int, radii: int, segments: float = DECAY_SEGMENTS) -> Work:
    """The density family (dip and decay) on ``size`` samples per split with ``radii`` decay
    radii, the decay's coarse search over ``segments`` segments a line (see the module
    docstring)."""
    coarse = segments * 2 * (COARSE_STEPS + 1)
    per_split = Work(
        forward_calls=1 + segments + BISECTIONS,
        forward_rows=size * (PATH_STEPS + coarse + BISECTIONS * 2 * radii),
        jacobian_calls=2,
        jacobian_points=size * (2 + 2 * radii),
        fixed_ops=FAMILY_OPS["density"] / 2,
    )
    return 2 * per_split


def recovery_work(size: int, starts: int, steps: int, splits: int = 2) -> Work:
    """Latent recovery of ``size`` samples in each of ``splits`` splits from ``starts`` starts
    of ``steps`` L-BFGS iterations each (``steps=0``: the starts' errors only), and the final
    errors."""
    calls = starts * (steps * EVALS_PER_STEP if steps else 1)
    per_split = Work(
        forward_calls=1,
        forward_rows=size,
        gradient_calls=calls,
        gradient_rows=calls * size,
        fixed_ops=OTHER_FAMILY_OPS / 2 + starts * steps * LBFGS_ITERATION_OPS,
    )
    return splits * per_split


def jvp_warm() -> bool:
    """Whether this process has paid the first forward-mode call's one-off cost."""
    return "torch._decomp.decompositions_for_jvp" in sys.modules


def figures_warm() -> bool:
    """Whether this process has drawn a matplotlib figure already (or has no matplotlib)."""
    return "matplotlib.pyplot" in sys.modules


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _reference(x: Tensor) -> Tensor:
    """:data:`OPS_PER_REFERENCE` small tensor operations."""
    for _ in range(OPS_PER_REFERENCE // 2):
        x = (x + 1.0) * 0.5
    return x


def _line(one: float, many: float, rows: int) -> tuple[float, float]:
    """``(per call, per row)`` through ``(1, one)`` and ``(rows, many)``, both non-negative."""
    per_row = max(many - one, 0.0) / max(rows - 1, 1)
    return max(one - per_row, 0.0), per_row


def time_units(
    decoder: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    forward_mode: bool,
    reverse_mode: bool,
    repeats: int = 2,
) -> UnitCosts:
    """Time ``decoder`` at one latent and at all of ``z`` (``(rows, m)``), the best of
    ``repeats`` calls each: without gradients, its forward-mode Jacobian (``forward_mode``; at
    one and two points) and a forward + backward pass (``reverse_mode``). The caller runs it
    inside the measurement context. On the conv autoencoder of ``benchmarks/overhead.py`` two
    repeats took 0.03-0.1 s on 2 loaded cores (five: 0.1-0.3 s, more than the monitor's whole
    share of a 6 s run)."""
    rows = len(z)
    with torch.no_grad():
        forward = _line(
            _best_of(lambda: decoder(z[:1]), repeats), _best_of(lambda: decoder(z), repeats), rows
        )
    jac = (0.0, 0.0)
    if forward_mode:
        points = z[:2] if rows > 1 else z[:1].expand(2, -1)
        one = _best_of(lambda: jacobian(decoder, z[:1]), repeats)
        jac = _line(one, _best_of(lambda: jacobian(decoder, points), repeats), len(points))
    grad = (0.0, 0.0)
    if reverse_mode:

        def step(latents: Tensor) -> None:
            latents = latents.detach().clone().requires_grad_(True)
            torch.autograd.grad(decoder(latents).square().sum(), latents)

        one = _best_of(lambda: step(z[:1]), repeats)
        grad = _line(one, _best_of(lambda: step(z), repeats), rows)
    small = torch.zeros(8, device=z.device)
    op = _best_of(lambda: _reference(small), repeats) / OPS_PER_REFERENCE
    return UnitCosts(forward, jac, grad, op)


def time_decoder(monitor: Any, pl_module: Any) -> UnitCosts | None:
    """Time ``monitor``'s decoder on :data:`TIMED_ROWS` latents drawn from its seed, in the
    measurement context (:func:`time_units`); ``None`` for a monitor without a decoder."""
    if not monitor.uses_decoder or monitor.latent_dim is None:
        return None
    device = pl_module.device
    generator = torch.Generator().manual_seed(monitor.seed)
    rows = min(TIMED_ROWS, monitor.effective_probe_size)
    z = torch.randn(rows, monitor.latent_dim, generator=generator)
    z = z.to(device, monitor.inputs["train"].dtype)
    with measurement_context(pl_module, device):
        return time_units(
            monitor.decoder(pl_module),
            z,
            forward_mode=any(f in FORWARD_MODE_FAMILIES for f in monitor.families),
            reverse_mode=monitor.uses_gradients,
        )
