"""Checks that a monitor fits the model and the data, run before the first training step.

Everything a measurement will need is tried once on a tiny batch when training starts, so that
no monitor first fails after a training epoch: the probe inputs' dtype, the encoder on two probe
samples, the decoder on a ``(2, latent_dim)`` latent batch (its signature, its output type and
shape against the inputs), the Jacobian's first columns (forward mode, else rows in reverse mode)
for the families that differentiate it, and one ``torch.autograd.grad`` for latent recovery. Each
failure is a ``ValueError`` that names the monitor, the argument, what was found and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from lightning_memwatch.callbacks.machinery.adapters import OutputError
from lightning_memwatch.callbacks.machinery.calling import (
    check_signature,
    is_latent_shape_error,
    is_shape_error,
    raised,
)
from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.callbacks.machinery.latent_views import (
    describe,
    latent_candidate,
    latents_of,
    numel,
)
from lightning_memwatch.functional.autodiff import AutodiffFallbackWarning
from lightning_memwatch.functional.jacobian import differentiation_mode

#: Families that differentiate the decoder (forward mode, ``torch.func.jvp``, where it works).
FORWARD_MODE_FAMILIES = ("spectrum", "density")


def check_no_shared_keys(monitor: Any, callbacks: Iterable[Any]) -> None:
    """Fail when another attached monitor logs some of ``monitor``'s keys: Lightning would
    average the two values of each such key into one, silently."""
    for other in callbacks:
        keys = getattr(other, "logged_keys", None)
        if other is monitor or keys is None:
            continue
        shared = sorted(set(keys) & set(monitor.logged_keys))
        if shared:
            listed = ", ".join(shared[:3]) + (", ..." if len(shared) > 3 else "")
            raise ValueError(
                f"Expected the attached monitors to log distinct keys but {monitor.state_key} and "
                f"{getattr(other, 'state_key', type(other).__name__)} both log {len(shared)} "
                f"({listed}): Lightning would average the two values of each into one. Give "
                "them disjoint `families`, or keep one of them"
            )


def model_inputs(x: Tensor, dtype: torch.dtype | None, monitor: str, what: str) -> Tensor:
    """The probe inputs in the model's floating dtype ``dtype`` (a cast between floating
    dtypes is safe); integer or boolean inputs fail: their scale is the user's to set."""
    if not x.is_floating_point():
        model = f"in {dtype}" if dtype is not None else "in floating point"
        raise ValueError(
            f"Expected {monitor}'s {what} probe inputs to be floating-point, as the model computes "
            f"{model}, but they are {x.dtype} (shape {tuple(x.shape[1:])}): pass `preprocess=` "
            "the name of a module method that converts a batch to the model's inputs (e.g. "
            "`batch[0].float() / 255`); the monitor does not guess a scale"
        )
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def _run_encoder(monitor: Any, encoder: Callable[..., Any], x: Tensor) -> Tensor:
    name, attribute = type(monitor).__name__, monitor.encoder_name
    try:
        output = encoder(x)
    except OutputError:
        raise
    except Exception as error:
        raise _encoder_error(name, attribute, x, error) from error
    try:
        latents = latents_of(output)
    except ValueError:
        latents = None
    if latents is None or latents.shape[0] != len(x):
        raise ValueError(
            f"Expected {name}'s encoder `{attribute}` to give a latent batch of {len(x)} (flat "
            f"(B, m) latents or (B, ...) latent maps: a tensor, a tuple's first element, a "
            f"distribution's mean) for {len(x)} probe samples but got {_describe_output(output)}"
            ": pass `encoder_output=` the entry of its output that holds the latents, or "
            "point `encoder=` at the map from inputs to latents"
        )
    return latents


def _describe_output(output: Any) -> str:
    candidate = latent_candidate(output)
    if candidate is None:
        return type(output).__name__
    if isinstance(output, Tensor):
        return f"a tensor {tuple(output.shape)}"
    return f"{type(output).__name__} holding a tensor {tuple(candidate.shape)}"


def _encoder_error(name: str, attribute: str, x: Tensor, error: Exception) -> ValueError:
    if is_shape_error(error):
        fix = (
            "If the module reshapes or converts its batch before the encoder (as a "
            "`_prepare_batch` method does), pass `preprocess=` the name of that method; if a "
            "sample holds more than the input, pass `input_key=` the index or key of the input; "
            "else point `encoder=` at the map from inputs to latents"
        )
    else:
        fix = (
            "The error is raised in the encoder's own code, not by the probe's shape: fix it "
            "there, or point `encoder=` at the map from inputs to latents"
        )
    return ValueError(
        f"{name} could not run the encoder `{attribute}` on {len(x)} training probe samples of "
        f"shape {tuple(x.shape[1:])} ({x.dtype}): {raised(error)}. {fix}"
    )


def _run_decoder(monitor: Any, decoder: Any, z: Tensor, source: str) -> Tensor:
    try:
        return decoder(z)
    except OutputError:
        raise
    except Exception as error:
        shape = decoder.reshape_to or tuple(z.shape[1:])
        if is_latent_shape_error(error, z, shape):
            fix = (
                "Pass `latent_dim=` the latent size the decoder takes (a shape such as (4, 8, 8) "
                "for a decoder of latent maps), or point `decoder=` at the map from latents to "
                "outputs"
            )
        else:
            fix = (
                "The error is raised in the decoder's own code, not by the latent size: fix it "
                "there, or point `decoder=` at the map from latents to outputs"
            )
        raise ValueError(
            f"{type(monitor).__name__} could not run the decoder `{monitor.decoder_name}` on a "
            f"{(len(z), *shape)} latent batch (latent_dim={describe(shape)}, {source}): "
            f"{raised(error)}. {fix}"
        ) from error


def _check_output(monitor: Any, out: Tensor, x: Tensor) -> None:
    name, attribute = type(monitor).__name__, monitor.decoder_name
    if out.ndim == 0 or out.shape[0] != len(x):
        raise ValueError(
            f"Expected {name}'s decoder `{attribute}` to return a batch of {len(x)} outputs for "
            f"{len(x)} latents but it returned shape {tuple(out.shape)}: its first dimension must "
            "be the batch; point `decoder=` at a callable that keeps it"
        )
    if out[0].numel() != x[0].numel():
        raise ValueError(
            f"Expected {name}'s decoder `{attribute}` to return as many values per sample as an "
            f"input has ({tuple(x.shape[1:])}, {x[0].numel()} values) to compare them, but it "
            f"returned {tuple(out.shape[1:])}: point `decoder=` at the map from latents to inputs "
            "(`decoder_output=` at the entry of its output that is the reconstruction), and "
            "`input_key=` / `preprocess=` at the model input of a sample"
        )


def _check_forward_mode(monitor: Any, decoder: Callable[..., Any], z: Tensor) -> None:
    """The Jacobian's first columns in forward mode, else its first rows in reverse mode (the
    mode that works is remembered for the measurements, and a fallback announced once); a
    ``ValueError`` only when the decoder cannot be differentiated either way."""
    families = [f for f in monitor.families if f in FORWARD_MODE_FAMILIES]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AutodiffFallbackWarning)
            differentiation_mode(decoder, z)
    except Exception as error:
        custom = "autograd.Function" in str(error)
        hint = (
            "a custom torch.autograd.Function in it needs a `backward` (reverse mode), or "
            "`setup_context` and `jvp` (forward mode; PyTorch docs: 'Extending torch.func with "
            "autograd.Function')"
            if custom
            else "it must be differentiable in its latents (no `torch.no_grad` or `detach` "
            "between the latents and the outputs, no in-place writes into its input)"
        )
        listed = " and ".join(repr(f) for f in families)
        raise ValueError(
            f"{type(monitor).__name__} measures the {listed} families by differentiating the "
            f"decoder `{monitor.decoder_name}` (forward mode, torch.func.jvp, else reverse mode), "
            f"which failed both ways: {type(error).__name__}: {error}. {hint[0].upper()}"
            f"{hint[1:]}; or leave {listed} out of `families`"
        ) from error
    for caught_warning in caught:  # the fallback's notice, named as the user named the decoder
        if issubclass(caught_warning.category, AutodiffFallbackWarning):
            name = f"{type(monitor).__name__}(decoder={monitor.decoder_name!r})"
            rank_zero_warn(f"{name}: {caught_warning.message}", category=AutodiffFallbackWarning)
        else:
            warnings.warn_explicit(
                caught_warning.message,
                caught_warning.category,
                caught_warning.filename,
                caught_warning.lineno,
            )


def _check_reverse_mode(monitor: Any, decoder: Callable[..., Any], z: Tensor) -> None:
    z = z.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            torch.autograd.grad(decoder(z).sum(), z)
    except Exception as error:
        raise ValueError(
            f"{type(monitor).__name__} recovers latents by gradient descent through the decoder "
            f"`{monitor.decoder_name}`, which failed: {type(error).__name__}: {error}. The "
            "decoder must be differentiable with respect to its latents (no `torch.no_grad`, "
            "`detach` or custom autograd.Function without `backward` in it); or pass `encoder=`"
        ) from error


def _latent_shape(monitor: Any, found: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the decoder takes: the encoder's ``found``, checked against ``latent_dim`` when
    one was given. An integer must be the latents' count; a shape must be the encoder's, or,
    for an encoder of flat latents, hold as many values (the decoder takes them as a map)."""
    wanted = monitor.latent_shape
    if wanted is None or wanted == found:
        return found
    if numel(wanted) == numel(found) and 1 in (len(wanted), len(found)):
        return wanted if len(found) == 1 else found
    raise ValueError(
        f"Expected {type(monitor).__name__}'s `latent_dim={describe(wanted)}` to be the size of "
        f"the latents of the encoder `{monitor.encoder_name}` but it gives {describe(found)}: "
        f"pass `latent_dim={describe(found)}` or none"
    )


def check_attachment(monitor: Any, pl_module: pl.LightningModule) -> int:
    """Run the encoder and the decoder once on the training probe as the measurements will, set
    ``monitor.latent_shape`` (the encoder's, else the one of ``monitor.latent_dim``;
    :func:`_latent_shape`) and return the flat latent size ``m``."""
    if not monitor.uses_decoder:
        return monitor.latent_dim
    device, name = pl_module.device, type(monitor).__name__
    x = monitor.inputs["train"][:2].to(device)
    source = "from `latent_dim=` or the module's `latent_dim`"
    with measurement_context(pl_module, device):
        encoder = monitor.encoder(pl_module)
        with torch.no_grad():
            if encoder is not None:
                check_signature(encoder, name, "encoder", monitor.encoder_name)
                _run_encoder(monitor, encoder, x)
                monitor.latent_shape = _latent_shape(monitor, encoder.latent_shape)
                source = "from the encoder's output"
            monitor.latent_dim = numel(monitor.latent_shape)
            decoder = monitor.decoder(pl_module)
            check_signature(decoder, name, "decoder", monitor.decoder_name)
            z = torch.zeros(len(x), monitor.latent_dim, dtype=x.dtype, device=device)
            _check_output(monitor, _run_decoder(monitor, decoder, z, source), x)
        if any(f in FORWARD_MODE_FAMILIES for f in monitor.families):
            _check_forward_mode(monitor, decoder, z[:1])
        if "recovery" in monitor.families or encoder is None:
            _check_reverse_mode(monitor, decoder, z[:1])
    return monitor.latent_dim
