"""Checks that a monitor fits the model and the data, run before the first training step.

Everything a measurement will need is tried once on a tiny batch when training starts, so that
no monitor first fails after a training epoch: the probe inputs' dtype, the encoder on two probe
samples, the decoder on a ``(2, latent_dim)`` latent batch (its signature, its output type and
shape against the inputs), the Jacobian's first columns (forward mode, else rows in reverse mode)
for the families that differentiate it, and one ``torch.autograd.grad`` for latent recovery. Each
failure is a ``ValueError`` that names the monitor, the argument, what was found and the fix.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from lightning_memwatch.callbacks.machinery.adapters import OutputError
from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.callbacks.machinery.probes import latent_candidate, latents_of
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


def _extra_required(fn: Callable[..., Any]) -> list[str] | None:
    """Required parameters of ``fn`` besides its first (the batch); ``None`` if it takes no
    positional argument at all; ``[]`` when its signature cannot be read."""
    target = fn.forward if isinstance(fn, nn.Module) else getattr(fn, "fn", fn)
    if isinstance(target, nn.Module):
        target = target.forward
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return []
    positional = [p for p in params if p.kind in kinds]
    if not positional:
        return None
    rest = params[params.index(positional[0]) + 1 :]
    required = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return [p.name for p in rest if p.default is p.empty and p.kind not in required]


def _check_signature(fn: Callable[..., Any], monitor: str, role: str, name: str) -> None:
    extra = _extra_required(fn)
    batch = "latent batch" if role == "decoder" else "batch of inputs"
    if extra is None or extra:
        found = "takes no argument" if extra is None else f"also requires {', '.join(extra)}"
        raise ValueError(
            f"Expected {monitor}'s {role} `{name}` to take the {batch} alone, as memwatch calls "
            f"it, but it {found}: pass `{role}=` a module attribute that does (e.g. a method "
            f"that calls `{name}` with the other arguments fixed)"
        )


def _run_encoder(monitor: Any, encoder: Callable[..., Any], x: Tensor) -> Tensor:
    name, attribute = type(monitor).__name__, monitor.encoder_name
    try:
        output = encoder(x)
    except OutputError:
        raise
    except Exception as error:
        raise _encoder_error(name, attribute, x, error) from error
    try:
        return latents_of(output)
    except ValueError:
        pass
    candidate = latent_candidate(output)
    if candidate is not None and candidate.ndim > 2 and candidate.shape[0] == len(x):
        shape = tuple(candidate.shape[1:])
        raise ValueError(
            f"Expected {name}'s encoder `{attribute}` to give flat (B, m) latents but it gives "
            f"latent maps of shape {shape} per sample: memwatch measures flat latents. Add two "
            f"module methods and name them: `encoder=` one that returns the latents flattened "
            f"(e.g. `{attribute}(x).mean.flatten(1)`) and `decoder=` one that reshapes (B, "
            f"{candidate[0].numel()}) latents back before decoding (e.g. "
            f"`decoder(z.view(-1, {', '.join(map(str, shape))}))`)"
        ) from None
    got = _describe_output(output)
    raise ValueError(
        f"Expected {name}'s encoder `{attribute}` to give a (B, m) latent batch (a tensor, "
        f"a tuple's first element, a distribution's mean) for {len(x)} probe samples but got "
        f"{got}: pass `encoder_output=` the entry of its output that holds the latents, or "
        "point `encoder=` at the map from inputs to latents"
    )


def _describe_output(output: Any) -> str:
    candidate = latent_candidate(output)
    if candidate is None:
        return type(output).__name__
    if isinstance(output, Tensor):
        return f"a tensor {tuple(output.shape)}"
    return f"{type(output).__name__} holding a tensor {tuple(candidate.shape)}"


def _encoder_error(name: str, attribute: str, x: Tensor, error: Exception) -> ValueError:
    return ValueError(
        f"{name} could not run the encoder `{attribute}` on {len(x)} training probe samples of "
        f"shape {tuple(x.shape[1:])} ({x.dtype}): {type(error).__name__}: {error}. If the module "
        "reshapes or converts its batch before the encoder (as a `_prepare_batch` method does), "
        "pass `preprocess=` the name of that method; if a sample holds more than the input, pass "
        "`input_key=` the index or key of the input; else point `encoder=` at the map from "
        "inputs to latents"
    )


def _run_decoder(monitor: Any, decoder: Callable[..., Any], z: Tensor, source: str) -> Tensor:
    try:
        return decoder(z)
    except OutputError:
        raise
    except Exception as error:
        raise ValueError(
            f"{type(monitor).__name__} could not run the decoder `{monitor.decoder_name}` on a "
            f"{tuple(z.shape)} latent batch (latent_dim={z.shape[1]}, {source}): "
            f"{type(error).__name__}: {error}. Pass `latent_dim=` the latent size the decoder "
            "takes, or point `decoder=` at the map from latents to outputs; a decoder of latent "
            "maps (B, C, H, W) needs a module method that reshapes flat latents first (e.g. "
            "`decoder(z.view(-1, C, H, W))`), named by `decoder=`"
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


def check_attachment(monitor: Any, pl_module: pl.LightningModule) -> int:
    """Run the encoder and the decoder once on the training probe as the measurements will,
    and return the latent size (the encoder's, else ``monitor.latent_dim``)."""
    if not monitor.uses_decoder:
        return monitor.latent_dim
    device = pl_module.device
    x = monitor.inputs["train"][:2].to(device)
    latent_dim, source = monitor.latent_dim, "from `latent_dim=` or the module's `latent_dim`"
    with measurement_context(pl_module, device):
        encoder = monitor.encoder(pl_module)
        with torch.no_grad():
            if encoder is not None:
                _check_signature(encoder, type(monitor).__name__, "encoder", monitor.encoder_name)
                latents = _run_encoder(monitor, encoder, x)
                if latent_dim is not None and latents.shape[1] != latent_dim:
                    raise ValueError(
                        f"Expected {type(monitor).__name__}'s `latent_dim={latent_dim}` to be the "
                        f"size of the latents of the encoder `{monitor.encoder_name}` but it "
                        f"gives {latents.shape[1]}: pass `latent_dim={latents.shape[1]}` or none"
                    )
                latent_dim, source = latents.shape[1], "from the encoder's output"
            decoder = monitor.decoder(pl_module)
            _check_signature(decoder, type(monitor).__name__, "decoder", monitor.decoder_name)
            z = torch.zeros(len(x), latent_dim, dtype=x.dtype, device=device)
            _check_output(monitor, _run_decoder(monitor, decoder, z, source), x)
        if any(f in FORWARD_MODE_FAMILIES for f in monitor.families):
            _check_forward_mode(monitor, decoder, z[:1])
        if "recovery" in monitor.families or encoder is None:
            _check_reverse_mode(monitor, decoder, z[:1])
    return latent_dim
