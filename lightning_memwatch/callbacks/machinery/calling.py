"""How memwatch calls the user's callables, and what it says when one does not fit.

- A decoder or an encoder is called on the batch alone (:func:`check_signature`). A decoder that
  requires a timestep (a diffusion model's denoiser ``denoiser(x_t, t)``, diffusers'
  ``UNet2DModel``) is pointed to ``DiffusionMonitor``; one whose first parameter is a batch size
  or a shape (a sampler: lucidrains' ``GaussianDiffusion.sample(batch_size)`` or
  ``ddim_sample(shape)``), or that takes no latent, to ``SampleMonitor(sampler=...)``.
- A sampler is called as ``sampler(n, generator=generator)`` when its signature takes a
  ``generator`` (or ``**kwargs``), else as ``sampler(n)`` inside an isolated global RNG seeded
  by the monitor's seed (:func:`draw_samples`): the draws are the same at every epoch and
  training's RNG is untouched. Never positionally: a second positional parameter may mean
  something else (``return_all_timesteps``).
- An exception raised inside the user's code is shown as theirs (:func:`failure_site`): the
  file and line of the innermost frame outside torch and memwatch.
"""

from __future__ import annotations

import inspect
import os
import re
import sysconfig
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn

from lightning_memwatch.callbacks.machinery.adapters import owner_module
from lightning_memwatch.callbacks.machinery.probes import seeded_rng

#: Parameter names that mean a diffusion timestep (or noise level).
TIMESTEP_NAMES = ("t", "timestep", "timesteps", "time", "sigma")
#: First-parameter names that mean a sampler (it draws its own noise).
SAMPLER_NAMES = ("batch_size", "shape", "num_samples", "n_samples")
#: Where a frame is not the user's: torch, memwatch and the standard library.
_NOT_USERS = tuple(
    str(Path(path).resolve()) + os.sep
    for path in (
        Path(torch.__file__).parent,
        Path(__file__).resolve().parents[2],
        sysconfig.get_paths()["stdlib"],
    )
)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter] | None:
    """The parameters of ``fn`` (an adapted callable's own, a module's ``forward``); ``None``
    when its signature cannot be read."""
    target = getattr(fn, "fn", fn)
    if isinstance(target, nn.Module):
        target = target.forward
    try:
        return list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None


def extra_required(fn: Callable[..., Any]) -> list[str] | None:
    """Required parameters of ``fn`` besides its first (the batch); ``None`` if it takes no
    positional argument at all; ``[]`` when its signature cannot be read or takes ``*args``."""
    params = _parameters(fn)
    if params is None or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return []
    positional = [p for p in params if p.kind in _POSITIONAL]
    if not positional:
        return None
    rest = params[params.index(positional[0]) + 1 :]
    return [p.name for p in rest if p.default is p.empty and p.kind not in _VARIADIC]


def _first_parameter(fn: Callable[..., Any]) -> str | None:
    params = _parameters(fn) or []
    positional = [p.name for p in params if p.kind in _POSITIONAL]
    return positional[0] if positional else None


def _denoiser_class(fn: Callable[..., Any]) -> str | None:
    """The class name of a diffusers UNet behind ``fn`` (a denoiser, not a decoder)."""
    module = owner_module(getattr(fn, "fn", fn))
    classes = type(module).__mro__ if module is not None else ()
    found = [c.__name__ for c in classes if c.__module__.startswith("diffusers.")]
    return next((name for name in found if name.startswith("UNet")), None)


def check_signature(fn: Callable[..., Any], monitor: str, role: str, name: str) -> None:
    """A ``ValueError`` unless ``fn`` can be called on the batch alone, pointing a denoiser
    (a required timestep, a diffusers UNet) to ``DiffusionMonitor`` and a sampler (first
    parameter a batch size or shape, or no latent at all) to ``SampleMonitor(sampler=...)``."""
    extra = extra_required(fn)
    if role == "decoder":
        timestep = [p for p in extra or [] if p in TIMESTEP_NAMES]
        unet = _denoiser_class(fn)
        if timestep or unet:
            what = f"is a diffusers {unet}" if unet else f"requires a timestep `{timestep[0]}`"
            raise ValueError(
                f"Expected {monitor}'s decoder `{name}` to map a latent batch to outputs, as "
                f"memwatch calls it, but it {what}: that is a diffusion model's denoiser "
                "(`denoiser(x_t, t)`), not a decoder. Watch a diffusion model with "
                "DiffusionMonitor(denoiser=..., schedule=...); for a latent diffusion model, "
                "point `decoder=` at its autoencoder's decoder (e.g. `vae.decode`)"
            )
        first = _first_parameter(fn)
        if extra is None or first in SAMPLER_NAMES:
            what = "takes no latent" if extra is None else f"takes `{first}` first"
            raise ValueError(
                f"Expected {monitor}'s decoder `{name}` to take a latent batch but it {what}, "
                "as a sampler does (it draws its own noise): pass it as "
                "SampleMonitor(sampler=...) (called `sampler(n, generator=...)`, or `sampler(n)` "
                "under a seeded RNG), or watch a diffusion model with "
                "DiffusionMonitor(denoiser=..., schedule=...); `decoder=` names the map from "
                "latents to outputs"
            )
    if extra is None or extra:
        batch = "latent batch" if role == "decoder" else "batch of inputs"
        found = "takes no argument" if extra is None else f"also requires {', '.join(extra)}"
        raise ValueError(
            f"Expected {monitor}'s {role} `{name}` to take the {batch} alone, as memwatch calls "
            f"it, but it {found}: pass `{role}=` a module attribute that does (e.g. a method "
            f"that calls `{name}` with the other arguments fixed)"
        )


def failure_site(error: BaseException) -> str:
    """Where ``error`` was raised in the user's code: ``" at <file>:<line>, in <function>:
    `<code>`"`` for the innermost frame outside torch, memwatch and the standard library, or
    ``""`` when every frame is theirs."""
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        path = str(Path(frame.filename).resolve())
        if frame.filename.startswith("<") or path.startswith(_NOT_USERS):
            continue
        shown = os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path
        code = f": `{frame.line.strip()}`" if frame.line else ""
        return f" at {shown}:{frame.lineno}, in {frame.name}{code}"
    return ""


def raised(error: BaseException) -> str:
    """``"<Type>: <message>"``, with where the user's code raised it (:func:`failure_site`)."""
    site = failure_site(error)
    return f"{type(error).__name__}: {error}" + (f" (raised{site})" if site else "")


_SHAPE_WORDS = re.compile(
    r"shape|size|dimension|channels|cannot be multiplied|mat1|expected input", re.IGNORECASE
)


def is_shape_error(error: BaseException) -> bool:
    """Whether ``error`` reads as a tensor shape mismatch (torch's wording)."""
    shape_kinds = (RuntimeError, ValueError, IndexError)
    return isinstance(error, shape_kinds) and _SHAPE_WORDS.search(str(error)) is not None


def is_latent_shape_error(error: BaseException, z: Tensor, shape: tuple[int, ...]) -> bool:
    """Whether ``error``, raised by the decoder on the flat latent batch ``z`` (reshaped to
    ``shape``), is a shape mismatch on the latent's last dimensions: a shape error
    (:func:`is_shape_error`) whose message names ``m``, ``B m`` or a latent map's channels."""
    if not is_shape_error(error):
        return False
    text = str(error)
    sizes = {z.shape[-1], z.numel(), *(shape[:1] if len(shape) > 1 else ())}
    return any(re.search(rf"(?<![0-9]){size}(?![0-9])", text) for size in sizes)


def _generator_parameter(sampler: Callable[..., Any]) -> inspect.Parameter | None:
    """The ``generator`` parameter of ``sampler`` (a ``**kwargs`` counts), or ``None``."""
    params = _parameters(sampler) or []
    for param in params:
        if param.name == "generator" and param.kind is not inspect.Parameter.VAR_POSITIONAL:
            return param
    return next((p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)


def draw_samples(sampler: Callable[..., Any], n: int, seed: int, device: torch.device) -> Any:
    """``n`` samples from ``sampler``, the same for the same ``seed``: with a
    ``torch.Generator`` on ``device`` seeded by ``seed``, by keyword (positionally only for a
    positional-only ``generator``), when its signature takes one; else ``sampler(n)`` inside an
    isolated global RNG (CPU and CUDA, numpy, python) seeded by ``seed``."""
    param = _generator_parameter(sampler)
    if param is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            return sampler(n, generator)
        return sampler(n, generator=generator)
    with isolate_rng(include_cuda=device.type == "cuda"), seeded_rng(seed):
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        return sampler(n)
