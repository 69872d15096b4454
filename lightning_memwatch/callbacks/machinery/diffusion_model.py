"""Reading a diffusion model as the user built it: its schedule, prediction type, data scaling
and denoiser, for :class:`~lightning_memwatch.callbacks.diffusion.DiffusionMonitor`.

The monitor names two attributes of the LightningModule (dotted, so a LightningCLI YAML can set
them):

- ``schedule``: an object with ``alphas_cumprod`` (diffusers' ``DDPMScheduler`` /
  ``DDIMScheduler``, denoising_diffusion_pytorch's ``GaussianDiffusion``) or that tensor itself
  (a module buffer). The prediction type is read from diffusers' ``config.prediction_type`` or
  denoising_diffusion_pytorch's ``objective``; the data scaling from the latter's ``normalize``
  (``auto_normalize=True``: ``[0, 1] -> [-1, 1]``), the same objects that train the model;
- ``denoiser``: called as ``denoiser(x_t, t)`` (``t`` a ``(B,)`` long tensor), plus
  ``class_labels=`` (or another keyword) for a class-conditional one; its output is a tensor or
  an object holding one (diffusers' ``UNet2DOutput.sample``), read by the package's output
  adapter (:func:`~lightning_memwatch.callbacks.machinery.adapters.output_tensor`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_memwatch.callbacks.machinery.adapters import Site, output_tensor
from lightning_memwatch.functional.diffusion import (
    PREDICTION_ALIASES,
    PREDICTIONS,
    canonical_prediction,
    check_alphas_cumprod,
)

MONITOR = "DiffusionMonitor"
#: Names a prediction type may be given by (``prediction=``).
KNOWN_PREDICTIONS = (*PREDICTIONS, *PREDICTION_ALIASES)


def resolve_object(module: Any, name: str, argument: str) -> Any:
    """``module.<name>``, following dots, callable or not (a scheduler, a buffer)."""
    value, path = module, type(module).__name__
    for part in name.split("."):
        if not hasattr(value, part):
            raise ValueError(
                f"Expected the LightningModule to have a `{name}` attribute for {MONITOR}'s "
                f"`{argument}` but {path} has no `{part}`: pass `{argument}=` the dotted name of "
                "the attribute"
            )
        value, path = getattr(value, part), f"{path}.{part}"
    return value


@dataclass(frozen=True)
class Schedule:
    """What the monitor reads from the ``schedule`` attribute."""

    #: ``abar_t``, float64 ``(T,)``, on the CPU.
    alphas_cumprod: Tensor
    #: The prediction type the object declares (canonical name), ``None`` if it declares none.
    prediction: str | None
    #: The object's map from dataset samples to the model's scale (denoising_diffusion_pytorch's
    #: ``normalize``), ``None`` if it has none.
    normalize: Callable[[Tensor], Tensor] | None


def _declared_prediction(obj: Any, name: str) -> str | None:
    config = getattr(obj, "config", None)
    declared = getattr(config, "prediction_type", None)
    if declared is None and isinstance(config, dict):
        declared = config.get("prediction_type")
    if declared is None:
        declared = getattr(obj, "objective", None)  # denoising_diffusion_pytorch
    if declared is None:
        return None
    try:
        return canonical_prediction(declared)
    except ValueError:
        raise ValueError(
            f"Expected {MONITOR}'s schedule `{name}` to declare a prediction type it knows, one "
            f"of {KNOWN_PREDICTIONS}, but it declares {declared!r}: the monitor measures "
            "epsilon-, x0- and v-predicting denoisers only"
        ) from None


def read_schedule(module: Any, name: str) -> Schedule:
    """The schedule named ``name`` on ``module`` (see the module docstring)."""
    obj = resolve_object(module, name, "schedule")
    values = obj if isinstance(obj, (Tensor, np.ndarray)) else getattr(obj, "alphas_cumprod", None)
    if values is None:
        raise ValueError(
            f"Expected {MONITOR}'s schedule `{name}` to be a tensor of alphas_cumprod or an object "
            f"with an `alphas_cumprod` attribute (diffusers' DDPMScheduler, denoising_diffusion_"
            f"pytorch's GaussianDiffusion) but got {type(obj).__name__} without one: pass "
            "`schedule=` the name of the noise scheduler, or of a buffer holding the cumulative "
            "products of 1 - beta_t"
        )
    try:
        alphas_cumprod = check_alphas_cumprod(torch.as_tensor(values)).cpu()
    except ValueError as error:
        raise ValueError(f"{MONITOR}'s schedule `{name}`: {error}") from None
    is_tensor = isinstance(obj, (Tensor, np.ndarray))
    prediction = None if is_tensor else _declared_prediction(obj, name)
    normalize = getattr(obj, "normalize", None) if hasattr(obj, "objective") else None
    return Schedule(alphas_cumprod, prediction, normalize if callable(normalize) else None)


def family_names(families: Any, known: tuple[str, ...]) -> tuple[str, ...]:
    """The short names (``"loss"``) of ``families``, a non-empty subset of ``known`` given by
    short or full name (``"diffusion/loss"``), in ``known``'s order."""
    names = () if isinstance(families, str) else tuple(families)
    short = tuple(f.removeprefix("diffusion/") if isinstance(f, str) else f for f in names)
    if not short or any(f not in known for f in short):
        raise ValueError(
            f"Expected `families` to be a non-empty subset of {known} but got {families!r}"
        )
    return tuple(f for f in known if f in short)


def check_labels(label_key: Any, label_argument: Any) -> None:
    """A label location (tuple index, dict key or ``None``) and a keyword name."""
    if label_key is not None and (
        isinstance(label_key, bool) or not isinstance(label_key, (int, str))
    ):
        raise ValueError(
            f"Expected `label_key` to be a tuple index, a dict key or None but got {label_key!r}"
        )
    if not isinstance(label_argument, str) or not label_argument.isidentifier():
        raise ValueError(
            f"Expected `label_argument` to be a keyword name but got {label_argument!r}"
        )


def check_prediction(prediction: str) -> str:
    """``prediction`` (``"auto"`` or a known type, canonical), else a ``ValueError``."""
    if prediction == "auto":
        return prediction
    if not isinstance(prediction, str) or prediction not in KNOWN_PREDICTIONS:
        raise ValueError(
            f"Expected `prediction` to be 'auto' or one of {KNOWN_PREDICTIONS} but got "
            f"{prediction!r}"
        )
    return canonical_prediction(prediction)


def model_prediction(prediction: str, schedule: Schedule, name: str) -> str:
    """The prediction type to measure with: the one given, else the one the schedule declares."""
    if prediction != "auto":
        return prediction
    if schedule.prediction is None:
        raise ValueError(
            f"Expected {MONITOR} to find the denoiser's prediction type but the schedule `{name}` "
            "declares none (no `config.prediction_type`, no `objective`): pass `prediction=` "
            f"one of {PREDICTIONS}"
        )
    return schedule.prediction


def check_data_range(data_range: Any) -> str | tuple[float, float] | None:
    """``"auto"``, ``None`` or a ``(low, high)`` pair with ``low < high``."""
    if data_range is None or data_range == "auto":
        return data_range
    try:
        low, high = (float(v) for v in data_range)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not low < high:
        raise ValueError(
            "Expected `data_range` to be 'auto', None or the (low, high) range of the probe "
            f"inputs (mapped to [-1, 1]) but got {data_range!r}"
        )
    return (low, high)


def data_scaling(
    data_range: str | tuple[float, float] | None, schedule: Schedule
) -> tuple[Callable[[Tensor], Tensor] | None, str]:
    """The map from probe inputs to the scale the denoiser is trained on, and what it is
    (said once at train start): ``(low, high) -> [-1, 1]`` linearly; ``"auto"``: the schedule
    object's ``normalize`` where it has one, else the inputs as they are; ``None``: as they are."""
    if isinstance(data_range, tuple):
        low, high = data_range
        return (
            lambda x: (x - low) * (2 / (high - low)) - 1
        ), f"mapped from {data_range} to [-1, 1]"
    if data_range == "auto" and schedule.normalize is not None:
        return schedule.normalize, "through the schedule's `normalize`"
    return None, "as they are"


class DenoiserCall:
    """``denoiser(x_t, t, **{label_argument: labels})`` with its output read as one tensor.

    ``labels`` may be one label for every sample (an int: expanded to the batch, so the call
    works on any chunk of points) or a ``(B,)`` tensor; ``None`` for an unconditional denoiser.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        output_key: str | None,
        label_argument: str,
        labels: Tensor | int | None = None,
    ) -> None:
        self.fn, self.output_key, self.label_argument = fn, output_key, label_argument
        self.site = Site(MONITOR, "denoiser", name)
        self.labels = labels

    def with_labels(self, labels: Tensor | int | None) -> DenoiserCall:
        """The same denoiser, conditioned on ``labels``."""
        return DenoiserCall(
            self.fn, self.site.attribute, self.output_key, self.label_argument, labels
        )

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        kwargs = {}
        if self.labels is not None:
            labels = self.labels
            if not isinstance(labels, Tensor) or labels.ndim == 0:
                labels = torch.as_tensor(labels, device=x_t.device).expand(len(x_t))
            kwargs[self.label_argument] = labels.to(x_t.device)
        return output_tensor(self.fn(x_t, t, **kwargs), self.output_key, self.site)
