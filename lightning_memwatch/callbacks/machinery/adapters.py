"""Reading the models people bring: dotted attribute names and outputs of any usual type.

A monitor is told its decoder, encoder and preprocessing by name (plain strings, so a
LightningCLI YAML can set them), dotted for wrapped models (``"model.decoder"``). What those
callables return is read by one adapter, the same for every monitor:

- a tensor is the output;
- a ``tuple`` / ``list``: its first element (a VAE decoder's ``(mean, log_var)``);
- a mapping (``dict``, Hugging Face / pythae ``ModelOutput``) or an object with attributes (a
  dataclass): the entry the user names (``decoder_output=`` / ``encoder_output=``), else its only
  tensor (or distribution), else an error that lists its entries;
- a ``torch.distributions.Distribution``: its mean (for the decoder; an encoder's distribution
  is read by :func:`~lightning_memwatch.callbacks.machinery.probes.latents_of`, or kept whole as the
  posterior of :class:`~lightning_memwatch.callbacks.likelihood.LikelihoodMonitor`).

The adapter is plain Python on the outputs, so ``torch.func.jvp`` and ``vmap`` run through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution


def check_name(argument: str, value: Any, optional: bool = True) -> str | None:
    """``value`` if it is a non-empty string (or ``None`` when ``optional``), else a
    ``ValueError`` naming ``argument``.

    Example::

        >>> check_name("decoder", "model.decoder")
        'model.decoder'
    """
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or any(not part for part in value.split(".")):
        what = "a module attribute (dotted for a submodule: 'model.decoder')"
        raise ValueError(
            f"Expected `{argument}` to name {what}{' or be None' if optional else ''} but got "
            f"{value!r}"
        )
    return value


def _members(obj: Any) -> str:
    """The submodules and public methods of ``obj`` worth naming in an error message."""
    names = [name for name, _ in obj.named_children()] if isinstance(obj, nn.Module) else []
    if not names:
        return ""
    return f" (its submodules: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})"


def resolve_attribute(module: nn.Module, name: str, argument: str) -> Callable[..., Any]:
    """The callable ``module.<name>``, following dots (``"model.decoder"``), that the monitor
    argument ``argument`` (``"decoder"``, ``"encoder"``, ``"preprocess"``, ...) names.

    Raises:
        ValueError: a step of the path is missing (naming the object that lacks it and its
            submodules), or the end is not callable.
    """
    role = "preprocessing" if argument == "preprocess" else argument
    value: Any = module
    path = type(module).__name__
    for part in name.split("."):
        if not hasattr(value, part):
            raise ValueError(
                f"Expected the LightningModule to have a `{name}` attribute for the {role} but "
                f"{path} has no `{part}`{_members(value)}: pass `{argument}=` the name of the "
                f"attribute (module or method, dotted for a submodule) that is the {role}"
            )
        value = getattr(value, part)
        path = f"{path}.{part}"
    if not callable(value):
        raise ValueError(
            f"Expected `{path}` (the {role}) to be callable but got {type(value).__name__}: name "
            "a module or a method"
        )
    return value


def owner_module(fn: Any) -> nn.Module | None:
    """The ``nn.Module`` behind a callable: itself, or the owner of a bound method."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def parameter_dtype(*candidates: Any) -> torch.dtype | None:
    """The floating dtype of the first floating parameter (else buffer) of the first candidate
    module (or bound method's owner) that has one; ``None`` if none has."""
    for fn in candidates:
        module = owner_module(fn)
        if module is None:
            continue
        for tensors in (module.parameters(), module.buffers()):
            for tensor in tensors:
                if tensor.is_floating_point():
                    return tensor.dtype
    return None


class OutputError(ValueError):
    """A decoder's or encoder's output that the adapter cannot read (the message says why)."""


@dataclass(frozen=True)
class Site:
    """Where an output comes from, for error messages: ``Site("RecoveryMonitor", "decoder",
    "model.decoder")`` reads the ``decoder_output`` of ``model.decoder``."""

    monitor: str
    role: str
    attribute: str

    @property
    def argument(self) -> str:
        return f"{self.role}_output"

    def describe(self) -> str:
        return f"{self.monitor}'s {self.role} `{self.attribute}`"


def _entries(output: Any) -> dict[str, Any] | None:
    """The named entries of a mapping, a dataclass or a plain object; ``None`` for others."""
    if isinstance(output, Mapping):
        return {str(key): value for key, value in output.items()}
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    if hasattr(output, "__dict__") and not callable(output):
        return {k: v for k, v in vars(output).items() if not k.startswith("_")}
    return None


def _distribution_like(value: Any) -> bool:
    """A ``torch.distributions.Distribution``, or an object with a tensor ``mean`` (diffusers'
    ``DiagonalGaussianDistribution``)."""
    return isinstance(value, Distribution) or (
        not isinstance(value, Tensor) and isinstance(getattr(value, "mean", None), Tensor)
    )


def _role_entry(role: str) -> str:
    return "reconstruction / generated sample" if role == "decoder" else "latents (or posterior)"


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor {tuple(value.shape)}"
    return type(value).__name__


def select_output(output: Any, key: str | None, site: Site) -> Any:
    """The entry ``key`` of a mapping / object output, or its only tensor or distribution when
    ``key`` is ``None``; tensors, tuples, lists and distributions pass through unchanged.

    Example::

        >>> import torch
        >>> site = Site("GeometryMonitor", "decoder", "decode")
        >>> select_output({"recon": torch.ones(1, 2), "kl": 3.0}, None, site)
        tensor([[1., 1.]])
    """
    if isinstance(output, (Tensor, tuple, list)) or _distribution_like(output):
        if key is not None:
            raise OutputError(
                f"Expected {site.describe()} to return a mapping or an object with a `{key}` "
                f"entry (`{site.argument}={key!r}`) but it returned {_describe(output)}: leave "
                f"`{site.argument}` None"
            )
        return output
    entries = _entries(output)
    if entries is None:
        raise OutputError(
            f"Expected {site.describe()} to return a tensor, a tuple, a mapping, an object with "
            f"attributes or a distribution but it returned {type(output).__name__}: point "
            f"`{site.role}=` at a callable that returns one"
        )
    listed = ", ".join(f"{name!r} ({_describe(value)})" for name, value in entries.items())
    if key is not None:
        if key not in entries:
            raise OutputError(
                f"Expected {site.describe()} to return an entry `{key}` (`{site.argument}="
                f"{key!r}`) but its {type(output).__name__} has {listed or 'no entries'}: pass "
                f"`{site.argument}=` one of them"
            )
        return entries[key]
    found = [v for v in entries.values() if isinstance(v, Tensor) or _distribution_like(v)]
    if len(found) != 1:
        raise OutputError(
            f"Expected {site.describe()} to return one tensor, or `{site.argument}=` to name "
            f"the entry to read, but its {type(output).__name__} has {listed or 'no entries'}: "
            f"pass `{site.argument}=` the name of the {_role_entry(site.role)}"
        )
    return found[0]


def output_tensor(output: Any, key: str | None, site: Site) -> Tensor:
    """The decoder's output batch as one tensor: :func:`select_output`, then a tuple's first
    element or a distribution's mean.

    Example::

        >>> import torch
        >>> site = Site("GeometryMonitor", "decoder", "decode")
        >>> output_tensor((torch.zeros(1, 2), torch.ones(1, 2)), None, site)
        tensor([[0., 0.]])
    """
    value = select_output(output, key, site)
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if _distribution_like(value):
        value = value.mean
    if not isinstance(value, Tensor):
        raise OutputError(
            f"Expected {site.describe()} to give a tensor (a tuple's first element, a "
            f"distribution's mean) but got {type(value).__name__}: pass `{site.argument}=` the "
            f"name of the {_role_entry(site.role)}, or point `{site.role}=` at a callable that "
            "returns it"
        )
    return value


class Adapted:
    """``fn`` with its output read by ``read``: ``Adapted(fn, read)(*args) == read(fn(*args))``.

    Behaves as a bound method of the module behind ``fn`` (``__self__``), so that code that
    hooks the decoder's submodules (local complexity) finds them.
    """

    def __init__(self, fn: Callable[..., Any], read: Callable[[Any], Any]) -> None:
        self.fn, self.read = fn, read
        self.__self__ = owner_module(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.read(self.fn(*args, **kwargs))

    def __repr__(self) -> str:
        return f"Adapted({self.fn!r})"


def adapt_decoder(fn: Callable[..., Any], key: str | None, site: Site) -> Adapted:
    """``fn`` whose outputs come out as tensors (:func:`output_tensor`)."""
    return Adapted(fn, lambda output: output_tensor(output, key, site))


def adapt_encoder(fn: Callable[..., Any], key: str | None, site: Site) -> Adapted:
    """``fn`` whose mapping / object outputs come out as the named (or only) entry
    (:func:`select_output`); tensors, tuples and distributions pass through."""
    return Adapted(fn, lambda output: select_output(output, key, site))
