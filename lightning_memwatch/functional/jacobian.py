"""Exact Jacobians of a decoder at a batch of latent points, by batched forward-mode AD.

For a decoder ``f: R^m -> R^n`` (outputs flattened) the Jacobian at ``z`` is the ``n x m``
matrix ``J = df/dz`` (Feiszli (2017), sec. 2.1). Feiszli builds it by central
differences (sec. 5.1); here every column ``J e_j`` is one Jacobian-vector product, and the ``m`` of
them are pushed through the decoder together: ``torch.func.vmap`` over the basis tangents of
``torch.func.jvp`` applied to a whole chunk of points. The primal pass runs once per point and
the tangent passes cost about one forward pass of ``B * m`` latents.

Attention and GroupNorm run on kernels that forward mode differentiates
(:func:`~lightning_memwatch.functional.kernels.forward_mode_kernels`); a decoder with any
other op that has no forward-mode rule is differentiated in reverse mode instead, the same
values at about ``n / m`` times the passes (:mod:`~lightning_memwatch.functional.autodiff`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from lightning_memwatch.functional.autodiff import (
    MODES,
    fallback_attempts,
    with_fallback,
)
from lightning_memwatch.functional.kernels import forward_mode_kernels
from lightning_memwatch.functional.reverse import reverse_jacobian

Decoder = Callable[[Tensor], Tensor]

#: Bytes of Jacobian entries a chunk may hold when ``chunk_size`` is not given. The tangent
#: activations inside the decoder scale the same way, so this bounds the peak memory too.
DEFAULT_CHUNK_BYTES = 64 * 2**20


@contextmanager
def differentiable_context() -> Iterator[None]:
    """Let forward-mode AD run whatever grad mode the caller is in, attention included.

    Under ``torch.inference_mode()`` (what ``trainer.validate`` uses) no autograd of any kind
    runs, so it is switched off; reverse-mode recording is switched off too (``no_grad``), so
    no graph is built through the user's parameters and their ``.grad`` is never touched.
    Forward-mode AD is unaffected by ``no_grad`` (the reverse-mode fallback enables recording
    for its own pass, with respect to the latents only). Attention is routed to kernels forward
    mode can differentiate
    (:func:`~lightning_memwatch.functional.kernels.forward_mode_kernels`).
    """
    with torch.inference_mode(False), torch.no_grad(), forward_mode_kernels():
        yield


def as_plain_tensor(z: Tensor) -> Tensor:
    """A detached copy of ``z`` that is safe to differentiate through.

    Tensors created under ``torch.inference_mode()`` cannot take part in AD; a clone made
    outside inference mode can.
    """
    with torch.inference_mode(False):
        return z.detach().clone()


@contextmanager
def fixed_randomness(device: torch.device) -> Iterator[Callable[[], None]]:
    """Yield ``rewind``, which puts the global RNG back where it was on entry; restored on exit.

    Rewinding before each decoder pass gives a stochastic decoder (dropout in train mode) the
    same draws in every pass, so that ``J V`` and ``J^T U`` are products of one Jacobian.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state(device) if devices else None

        def rewind() -> None:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, device)

        yield rewind


def push_block(f: Decoder, z: Tensor, block: Tensor) -> tuple[Tensor, Tensor]:
    """``f(z)`` ``(b, ...)`` and ``J V`` ``(l, b, ...)`` for a float64 block ``V`` (``(m, l)``
    shared by the points, or ``(b, m, l)``): one ``vmap`` of ``jvp`` over its columns, the
    outputs computed once."""
    tangents = block.to(z.dtype).transpose(-1, -2)
    tangents = tangents[:, None] if block.ndim == 2 else tangents.transpose(0, 1)
    tangents = tangents.expand(-1, *z.shape).contiguous()

    def push(tangent: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(f, (z,), (tangent,))

    return torch.func.vmap(push, out_dims=(None, 0), randomness="same")(tangents)


def _basis_tangents(z: Tensor) -> Tensor:
    """The ``m`` basis tangents ``e_j``, each broadcast over the batch: ``(m, B, m)``."""
    batch, dim = z.shape
    eye = torch.eye(dim, dtype=z.dtype, device=z.device)
    return eye[:, None, :].expand(dim, batch, dim)


def _jacobian_vmap(f: Decoder, z: Tensor, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """``vmap`` over the basis tangents (the first ``limit``) of ``jvp(f)`` at the whole chunk:
    the outputs ``(B, ...)`` (computed once, not per tangent) and the tangents ``(m, B, ...)``."""

    def push(tangent: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(f, (z,), (tangent,))

    tangents = _basis_tangents(z)[:limit]
    return torch.func.vmap(push, out_dims=(None, 0), randomness="same")(tangents)


def finite_outputs(outputs: Tensor) -> Tensor:
    """``(B,)`` mask of the points whose output ``(B, ...)`` is finite everywhere."""
    return torch.isfinite(outputs.reshape(outputs.shape[0], -1)).all(dim=-1)


def _forward_chunk(f: Decoder, z: Tensor, limit: int | None) -> tuple[Tensor, Tensor]:
    """Outputs and ``(B, n, m)`` Jacobians, a transposed view of the ``(m, B, n)`` tangents:
    keeping ``n`` innermost lets the Gram (``J^T J = Jt Jt^T`` with ``Jt = J.mT``) read them
    without a strided copy."""
    outputs, columns = _jacobian_vmap(f, z, limit)
    dim, batch = columns.shape[:2]
    return outputs, columns.reshape(dim, batch, -1).transpose(0, 1).mT


def _jacobian_chunk(f: Decoder, z: Tensor, limit: int | None = None) -> tuple[Tensor, int]:
    """Jacobian of one chunk of points, ``(B, n, m)`` (only ``limit`` columns, or rows in
    reverse mode, when given), and the index of the mode in
    :data:`~lightning_memwatch.functional.autodiff.MODES` that computed it: forward mode or,
    where it fails, reverse mode (:func:`~lightning_memwatch.functional.autodiff.with_fallback`).

    A point whose output is not finite gets an all-NaN Jacobian: forward-mode AD can hand back
    a finite tangent there (``relu`` of a NaN, a NaN constant in ``torch.where``), which would
    read as a zero or ordinary spectrum.
    """
    attempts = fallback_attempts(
        lambda: _forward_chunk(f, z, limit),
        lambda mode: reverse_jacobian(f, z, mode, budget_bytes=DEFAULT_CHUNK_BYTES, limit=limit),
    )
    (outputs, jac), mode = with_fallback(f, z, attempts)
    finite = finite_outputs(outputs)
    if not bool(finite.all()):
        jac = torch.where(finite[:, None, None], jac, torch.nan)
    return jac, mode


def differentiation_mode(f: Decoder, z: Tensor) -> str:
    """How ``f``'s Jacobians will be computed, one of
    :data:`~lightning_memwatch.functional.autodiff.MODES` (``"forward"`` unless an op lacks a
    forward-mode rule), tried cheaply (two columns or rows) on the first point of ``z`` twice
    (some failures need a batch of two) and remembered for the measurements. Raises the last
    mode's error when none works."""
    _check_latents(z)
    with differentiable_context():
        return MODES[_jacobian_chunk(f, as_plain_tensor(z[:1].repeat(2, 1)), limit=2)[1]]


def _check_latents(z: Tensor) -> None:
    if not isinstance(z, Tensor) or z.ndim != 2:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"Expected `z` to be a (B, m) latent batch but got {shape}")
    if not z.is_floating_point():
        raise ValueError(f"Expected `z` to be a floating-point tensor but got {z.dtype}")


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(
            f"Expected `chunk_size` to be a positive integer or None but got {chunk_size!r}"
        )


def default_chunk_size(f: Decoder, z: Tensor, *, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Points per chunk so that a chunk's Jacobian takes about ``budget_bytes``.

    Runs the decoder once on a single point to learn the output size ``n``.
    """
    with differentiable_context():
        n = f(z[:1]).reshape(1, -1).shape[1]
    per_point = n * z.shape[1] * z.element_size()
    return max(1, min(z.shape[0], budget_bytes // max(per_point, 1)))


def map_chunks(compute: Callable[[Tensor], Tensor], z: Tensor, size: int) -> Tensor:
    """``compute`` on consecutive chunks of at most ``size`` points of ``z``, concatenated.

    On a CUDA out-of-memory error the chunk is halved and the failed chunk retried.
    """
    if z.shape[0] == 0:
        raise ValueError("Expected `z` to hold at least one latent point but got an empty batch")
    results: list[Tensor] = []
    start = 0
    while start < z.shape[0]:
        chunk = z[start : start + size]
        try:
            results.append(compute(chunk))
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            if z.is_cuda:
                torch.cuda.empty_cache()
            continue
        start += chunk.shape[0]
    return results[0] if len(results) == 1 else torch.cat(results, dim=0)


def map_jacobian_chunks(
    f: Decoder,
    z: Tensor,
    reduce: Callable[[Tensor], Tensor],
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Compute ``reduce(J)`` chunk by chunk and concatenate along the batch.

    Only one chunk's Jacobian ``(chunk, n, m)`` is alive at a time, so the peak memory is set
    by ``chunk_size``, not by ``B``. On a CUDA out-of-memory error the chunk is halved and the
    failed chunk retried.
    """
    _check_latents(z)
    _check_chunk_size(chunk_size)
    z = as_plain_tensor(z)
    if z.shape[0] == 0:
        raise ValueError("Expected `z` to hold at least one latent point but got an empty batch")
    size = chunk_size or default_chunk_size(f, z)
    with differentiable_context():
        return map_chunks(lambda chunk: reduce(_jacobian_chunk(f, chunk)[0]), z, size)


def jacobian(f: Decoder, z: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """Jacobian ``J = df/dz`` of a decoder at each latent point, outputs flattened.

    Feiszli (2017), sec. 2.1: ``f(z + h v) = f(z) + h J v + o(h)``. Computed
    exactly by forward-mode AD (not Feiszli's central differences, sec. 5.1), in the dtype and on
    the device of ``z``; works under ``torch.no_grad()`` and ``torch.inference_mode()`` and
    never writes a parameter's ``.grad``. Attention runs on kernels forward mode differentiates
    (:func:`~lightning_memwatch.functional.kernels.forward_mode_kernels`); a decoder with another
    op that has no forward-mode rule is differentiated in reverse mode, announced once by an
    :class:`~lightning_memwatch.functional.autodiff.AutodiffFallbackWarning` (the same values,
    about ``n / m`` times the passes).

    Args:
        f: any callable from a ``(B, m)`` latent batch to a ``(B, ...)`` output batch.
        z: latent points, ``(B, m)``.
        chunk_size: points per forward-mode pass; ``None`` sizes chunks to
            :data:`DEFAULT_CHUNK_BYTES` of Jacobian entries.

    Returns:
        ``(B, n, m)`` tensor, ``n`` the number of output elements; all NaN at a point whose
        output has a non-finite element (there is no derivative to report there).

    Example::

        >>> import torch
        >>> A = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
        >>> jacobian(lambda z: z @ A.T, torch.zeros(1, 2))
        tensor([[[2., 0.],
                 [0., 3.],
                 [1., 1.]]])
    """
    return map_jacobian_chunks(f, z, lambda jac: jac, chunk_size=chunk_size)
