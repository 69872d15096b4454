"""Jacobians by reverse mode: the fallback for decoders with an op that has no forward-mode rule.

Row ``i`` of ``J = df/dz`` is the vector-Jacobian product ``e_i^T J``; the ``n`` rows cost ``n``
backward passes against ``m`` forward-mode tangents (:mod:`~lightning_memwatch.functional.autodiff`
chooses the mode). Three ways of pushing the basis cotangents, fastest first: ``torch.func.vjp``
under ``vmap``; ``torch.autograd.grad`` with ``is_grads_batched`` (takes a custom
``autograd.Function`` without ``setup_context``, which ``torch.func`` refuses); one
``torch.autograd.grad`` per output element (a backward that cannot run under ``vmap``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _cotangent_rows(start: int, stop: int, batch: int, n: int, like: Tensor) -> Tensor:
    """Basis cotangents ``e_i`` for ``i`` in ``[start, stop)``, broadcast over the points:
    ``(stop - start, batch, n)``, built per block so ``I_n`` is never held whole."""
    rows = torch.zeros(stop - start, batch, n, dtype=like.dtype, device=like.device)
    index = torch.arange(start, stop, device=like.device)
    rows[torch.arange(stop - start, device=like.device), :, index] = 1
    return rows


def reverse_jacobian(
    f: Callable[[Tensor], Tensor],
    z: Tensor,
    mode: str,
    *,
    budget_bytes: int,
    limit: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``f(z)`` flattened ``(B, n)`` and the Jacobians ``(B, n, m)`` by reverse mode, with
    respect to ``z`` only (no parameter's ``.grad`` is written; works under an outer
    ``no_grad``). ``mode`` is one of ``MODES[1:]``; ``limit`` keeps the first rows only.

    The ``n`` basis cotangents go through in blocks of ``c`` rows, ``c B n`` entries at most
    ``budget_bytes`` (about ``m`` rows when ``B`` is the forward-mode chunk: the same peak
    memory). Row ``i`` of every point's Jacobian comes from one backward of ``sum_b f_i(z_b)``:
    exact when the points do not interact (a module in eval mode).
    """
    batch = z.shape[0]
    with torch.enable_grad():
        if mode == "vjp":
            outputs, pull = torch.func.vjp(lambda x: f(x).reshape(batch, -1), z)
        else:
            x = z.detach().requires_grad_(True)
            outputs = f(x).reshape(batch, -1)
        n = outputs.shape[1] if limit is None else min(limit, outputs.shape[1])
        if mode != "vjp" and not outputs.requires_grad:  # no path from the latents: J = 0
            return outputs.detach(), z.new_zeros(batch, n, z.shape[1])
        width = max(1, min(n, budget_bytes // max(batch * outputs.shape[1] * z.element_size(), 1)))
        blocks = []
        for start in range(0, n, width):
            stop = min(n, start + width)
            if mode == "vjp":
                cotangents = _cotangent_rows(start, stop, batch, outputs.shape[1], z)
                blocks.append(torch.func.vmap(pull)(cotangents)[0])
            elif mode == "grad":
                cotangents = _cotangent_rows(start, stop, batch, outputs.shape[1], z)
                blocks.append(_grad(outputs, x, cotangents, batched=True))
            else:
                blocks.append(
                    torch.stack([_grad(outputs[:, i].sum(), x) for i in range(start, stop)])
                )
    return outputs.detach(), torch.cat(blocks).transpose(0, 1)


def _grad(
    outputs: Tensor, x: Tensor, cotangents: Tensor | None = None, batched: bool = False
) -> Tensor:
    """``torch.autograd.grad`` with respect to ``x`` alone, graph kept; zeros where the
    outputs do not depend on ``x``."""
    (g,) = torch.autograd.grad(
        outputs, x, cotangents, retain_graph=True, allow_unused=True, is_grads_batched=batched
    )
    if g is None:
        shape = (cotangents.shape[0], *x.shape) if batched else x.shape
        g = torch.zeros(shape, dtype=x.dtype, device=x.device)
    return g.detach()
