"""DiffusionMonitor's checks before the first training step: the denoiser is called on two probe
samples as the measurements will call it, and differentiated once (forward mode, else reverse
mode) when the spectrum family is on, so that a misconfiguration fails then, with a message
that names the fix.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_memwatch.callbacks.machinery.adapters import OutputError
from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.functional.denoiser_spectrum import x0_estimator, x0_singular_values
from lightning_memwatch.functional.diffusion import q_sample, timestep_batch


def positional_arity(fn: Callable[..., Any]) -> tuple[int, int] | None:
    """``(required, accepted)`` positional parameters of ``fn`` (``accepted`` large for
    ``*args``); ``None`` when its signature cannot be read."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in params if p.kind in kinds]
    required = sum(p.default is p.empty for p in positional)
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    return required, 2**31 if variadic else len(positional)


def _check_signature(monitor: Any) -> None:
    arity = positional_arity(monitor.call.fn)
    if arity is None:
        return
    required, accepted = arity
    if accepted < 2 or required > 2:
        found = (
            f"takes {accepted} positional argument{'s' if accepted != 1 else ''}"
            if accepted < 2
            else f"requires {required} positional arguments"
        )
        raise ValueError(
            f"Expected DiffusionMonitor's denoiser `{monitor.decoder_name}` to take (x_t, t), the "
            f"noised batch and its timesteps, as diffusers' UNet2DModel does, but it {found}: "
            "pass `denoiser=` the name of the network (not of a wrapper that computes the loss), "
            "or of a module method `(x_t, t) -> prediction`"
        )


def _run(monitor: Any, x: Tensor, t: int) -> Tensor:
    abar = monitor.schedule.alphas_cumprod
    x_t = q_sample(x, t, torch.zeros_like(x), abar)
    call = monitor.call
    if monitor.labels is not None:
        call = call.with_labels(monitor.labels["train"][: len(x)].to(x.device))
    try:
        return call(x_t, timestep_batch(t, len(x), x.device))
    except OutputError:
        raise
    except Exception as error:
        labels = f" and `{monitor.label_argument}=` labels" if monitor.labels is not None else ""
        raise ValueError(
            f"DiffusionMonitor could not run the denoiser `{monitor.decoder_name}` as "
            f"`denoiser(x_t, t)` on {len(x)} noised training probe samples of shape "
            f"{tuple(x.shape[1:])} ({x.dtype}) with long timesteps{labels}: "
            f"{type(error).__name__}: {error}. Point `denoiser=` at the network that takes "
            "(x_t, t); pass `label_key=` for a class-conditional one, `preprocess=` / "
            "`input_key=` if a sample holds more than the model's input"
        ) from error


def _check_forward_mode(monitor: Any, x: Tensor) -> None:
    t = monitor.spectrum_grid[0]
    call = monitor.call
    if monitor.labels is not None:
        call = call.with_labels(int(monitor.labels["train"][0]))
    estimate = x0_estimator(call, t, monitor.schedule.alphas_cumprod, monitor.prediction_type)
    try:
        x0_singular_values(estimate, x[:1], projection=monitor.projection)
    except Exception as error:
        raise ValueError(
            f"DiffusionMonitor measures the 'spectrum' family by differentiating the denoiser "
            f"`{monitor.decoder_name}` in x_t (forward mode, torch.func.jvp, else reverse mode), "
            f"which failed both ways: {type(error).__name__}: {error}. It must be differentiable "
            "in its input (no `torch.no_grad` or `detach` between x_t and the output, a custom "
            "autograd.Function needs a `backward`); or leave 'spectrum' out of `families`"
        ) from error


def check_denoiser(monitor: Any, pl_module: pl.LightningModule) -> None:
    """Run the denoiser as the families will (see the module docstring)."""
    _check_signature(monitor)
    device = pl_module.device
    x = monitor.inputs["train"][:2].to(device)
    with measurement_context(pl_module, device):
        with torch.no_grad():
            out = _run(monitor, x, monitor.loss_grid[0])
        if out.shape != x.shape:
            raise ValueError(
                f"Expected DiffusionMonitor's denoiser `{monitor.decoder_name}` to return a "
                f"prediction of the input's shape {tuple(x.shape)} but it returned "
                f"{tuple(out.shape)}: point `denoiser=` at the network whose output is the "
                "noise, x0 or v prediction (`denoiser_output=` at the entry of its output "
                "that holds it), and `input_key=` / `preprocess=` at the model input of a sample"
            )
        if monitor.spectrum_family in monitor.families:
            _check_forward_mode(monitor, x)
