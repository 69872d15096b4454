"""Latent recovery: the latent whose decoding is nearest to a target, by batched L-BFGS.

Webster et al. (2019), sec. 2.1, eq. (NN_G): ``z*(y) = argmin_z ||f(z) - y||^2``.
The recovery error ``e(y) = mean((f(z*) - y)^2)`` (mean over output elements) is what the train /
validation comparison reads (Webster et al. (2019), eq. 4, 5: ``mre_gap``, ``ks_pvalue`` in
``stats.py``). Webster runs one L-BFGS of about 50 iterations per image; here one
``torch.optim.LBFGS`` runs on the sum of the per-sample losses of a whole batch of latents. The
samples are independent, so the summed gradient is each sample's own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.jacobian import _check_chunk_size, as_plain_tensor

Decoder = Callable[[Tensor], Tensor]

#: L-BFGS stopping tolerances: small enough that a batch whose summed loss is already tiny (a
#: decoder that reproduces its targets) keeps iterating to ``steps`` rather than stopping early.
TOLERANCE_GRAD, TOLERANCE_CHANGE = 1e-12, 1e-14


def _check_args(
    x: Tensor, latent_dim: int, z_init: Tensor | None, steps: int, restarts: int
) -> None:
    check_int("latent_dim", latent_dim)
    check_int("steps", steps, minimum=0)
    check_int("restarts", restarts, minimum=0)
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"Expected `x` to be a non-empty (B, ...) target batch but got {shape}")
    if z_init is not None and (
        not isinstance(z_init, Tensor)
        or tuple(z_init.shape[-2:]) != (x.shape[0], latent_dim)
        or z_init.ndim not in (2, 3)
        or not z_init.is_floating_point()
    ):
        got = tuple(z_init.shape) if isinstance(z_init, Tensor) else type(z_init).__name__
        raise ValueError(
            f"Expected `z_init` to be a floating-point ({x.shape[0]}, {latent_dim}) latent batch "
            f"(or a stack (S, {x.shape[0]}, {latent_dim}) of S of them) but got {got}"
        )
    if z_init is None and (steps == 0 or restarts == 0):
        raise ValueError(
            f"Expected `z_init` when `steps` or `restarts` is 0 (nothing to start from) but got "
            f"steps={steps}, restarts={restarts} and no `z_init`"
        )


def _per_sample_loss(
    f: Decoder, z: Tensor, target: Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """``mean((f(z) - target)^2)`` over each sample's output elements (in ``dtype``): ``(B,)``."""
    out = f(z).reshape(z.shape[0], -1)
    if out.shape != target.shape:
        raise ValueError(
            f"Expected `f` to return {target.shape[1]} elements per sample (as many as `x`) but "
            f"got {out.shape[1]}"
        )
    if dtype is not None:
        out, target = out.to(dtype), target.to(dtype)
    return (out - target).square().mean(dim=1)


def _recover_chunk(
    f: Decoder, target: Tensor, starts: list[Tensor], steps: int, history_size: int = 100
) -> Tensor:
    """The best latent of each sample over every objective evaluation from every start."""
    best_z = starts[0].clone()
    best_loss = torch.full((target.shape[0],), torch.inf, dtype=torch.float64, device=target.device)

    def keep_best(z: Tensor, loss: Tensor) -> None:
        better = loss.detach().to(torch.float64) < best_loss  # NaN never counts as better
        best_loss[better] = loss.detach().to(torch.float64)[better]
        best_z[better] = z.detach()[better]

    for start in starts:
        z = start.clone().requires_grad_(True)
        if steps == 0:
            with torch.no_grad():
                keep_best(z, _per_sample_loss(f, z, target))
            continue
        optimizer = torch.optim.LBFGS(
            [z],
            max_iter=steps,
            tolerance_grad=TOLERANCE_GRAD,
            tolerance_change=TOLERANCE_CHANGE,
            history_size=history_size,
            line_search_fn="strong_wolfe",
        )

        def closure(z: Tensor = z) -> Tensor:
            loss = _per_sample_loss(f, z, target)
            keep_best(z, loss)
            finite = torch.isfinite(loss)
            objective = torch.where(finite, loss, torch.zeros_like(loss)).sum()
            grad = torch.zeros_like(z)
            if objective.requires_grad:
                (grad,) = torch.autograd.grad(objective, [z], allow_unused=True)
                grad = torch.zeros_like(z) if grad is None else grad
            # A non-finite sample contributes neither loss nor gradient (0 * NaN would be NaN).
            z.grad = torch.where(finite[:, None] & torch.isfinite(grad), grad, 0.0)
            return objective.detach()

        optimizer.step(closure)
    return best_z


def recover_latents(
    f: Decoder,
    x: Tensor,
    *,
    latent_dim: int,
    z_init: Tensor | None = None,
    steps: int = 50,
    restarts: int = 2,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    history_size: int = 100,
) -> tuple[Tensor, Tensor]:
    """Recover the latent of each target and its recovery error (Webster et al. (2019), eq. NN_G).

    Webster et al. (2019), sec. 2.1, sec. 3.3::

        z*(y) = argmin_z ||f(z) - y||^2,        e(y) = mean((f(z*) - y)^2)  (over elements)

    One ``torch.optim.LBFGS`` (strong-Wolfe line search, ``max_iter=steps``, one ``.step`` per
    start, ``tolerance_grad=1e-12`` and ``tolerance_change=1e-14`` so that tiny losses do not stop
    it early) minimises the sum of the per-sample losses of a chunk of latents. Starts: ``restarts``
    draws from the prior ``N(0, I)``, made with ``generator`` (a fresh, default-seeded
    ``torch.Generator`` when ``None``: the global RNG is never used nor advanced), plus ``z_init``
    when given (``restarts + 1`` starts). The draws are made for the whole batch up front, so
    ``chunk_size`` does not change the starts. Every objective evaluation is a forward pass of
    every sample, so each sample keeps the best latent it reached over all evaluations of all
    starts (the samples are independent); the errors are then recomputed by a plain forward pass.
    The chunk shares L-BFGS's curvature pairs and step lengths, so its iterates are not those of
    per-sample solves, but each sample reaches the optimum it reaches alone from the same start.

    A sample whose loss is NaN or inf enters the summed objective as 0 with a zero gradient, so it
    cannot poison the line search of the others; its error is reported non-finite (and a sample
    that is non-finite at every evaluation returns its first start). Works under
    ``torch.no_grad()`` and ``torch.inference_mode()``. Gradients are taken with
    ``torch.autograd.grad`` with respect to the latents only: the decoder's parameters' ``.grad``,
    ``requires_grad`` and train/eval mode are left as they are (put the decoder in eval mode first
    if it has dropout or batch norm: the samples must not interact).

    Args:
        f: any callable from a ``(B, m)`` latent batch to a ``(B, ...)`` output batch.
        x: targets ``(B, ...)``, as many elements per sample as ``f`` outputs (compared flattened).
        latent_dim: ``m``.
        z_init: an extra start ``(B, m)``, e.g. an encoder's latents, or a stack ``(S, B, m)`` of
            ``S`` extra starts (e.g. the latents of an earlier recovery and the encoder's).
            Required when ``steps=0`` (then each sample keeps its best start, with its error;
            ``restarts`` is ignored) or ``restarts=0``.
        steps: L-BFGS iterations per start (Webster et al. (2019): about 50).
        restarts: starts drawn from the prior.
        generator: the ``torch.Generator`` the prior draws use.
        chunk_size: samples per L-BFGS problem (memory); ``None`` is the whole batch.
        history_size: L-BFGS curvature pairs kept (torch's default 100; 10 costs 0.75x of it on
            the demo VAE with errors within 1%).

    Returns:
        ``(z, errors)``: latents ``(B, m)`` in the dtype of ``z_init`` if given, else of ``x`` (or
        the default dtype for integer targets), on ``x``'s device; errors ``(B,)``, float64.

    Example::

        >>> import torch
        >>> z0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
        >>> z, errors = recover_latents(lambda z: 2 * z, 2 * z0, latent_dim=2)
        >>> torch.allclose(z, z0), bool(errors.max() < 1e-20)
        (True, True)
    """
    _check_args(x, latent_dim, z_init, steps, restarts)
    _check_chunk_size(chunk_size)
    check_int("history_size", history_size)
    batch = x.shape[0]
    with torch.inference_mode(False), torch.enable_grad():
        target = as_plain_tensor(x).reshape(batch, -1)
        if not target.is_floating_point():
            target = target.to(torch.get_default_dtype())
        dtype = z_init.dtype if z_init is not None else target.dtype
        starts: list[Tensor] = []
        if steps > 0 and restarts > 0:
            if generator is None:
                generator = torch.Generator(device=target.device)
            draws = torch.randn(
                restarts,
                batch,
                latent_dim,
                generator=generator,
                dtype=dtype,
                device=generator.device,
            )
            starts.extend(draws.to(target.device).unbind(0))
        if z_init is not None:
            extra = as_plain_tensor(z_init).to(target.device)
            starts.extend(extra.unbind(0) if extra.ndim == 3 else [extra])
        size = chunk_size or batch
        z = torch.cat(
            [
                _recover_chunk(
                    f, target[i : i + size], [s[i : i + size] for s in starts], steps, history_size
                )
                for i in range(0, batch, size)
            ]
        )
        with torch.no_grad():
            errors = torch.cat(
                [
                    _per_sample_loss(f, z[i : i + size], target[i : i + size], torch.float64)
                    for i in range(0, batch, size)
                ]
            )
    return z, errors
