"""Reading the models people bring: dotted attribute names and outputs of any usual type.

A monitor is told its decoder, encoder and preprocessing by name (plain strings, so a
LightningCLI YAML can set them), dotted for wrapped models (``"model.decoder"``). What those
callables return is read by one adapter, the same for every monitor:

- a tensor is the output;
- a ``tuple`` / ``list``: its first element (a VAE decoder's ``(mean, log_var)``);
- a mapping (``dict``, diffusers' ``BaseOutput``, Hugging Face / pythae ``ModelOutput``) or an
  object with attributes (a dataclass): the entry the user names (``decoder_output=`` /
  ``encoder_output=``), else its only tensor (or distribution), else the first entry of
  :data:`PREFERRED_ENTRIES` for the role that it has (diffusers' ``DecoderOutput.sample`` beside
  a VQ model's ``commit_loss``), else an error that lists its entries;
- a ``torch.distributions.Distribution`` or an object with a tensor ``mean`` (diffusers'
  ``DiagonalGaussianDistribution``, an ``AutoencoderKLOutput``'s ``latent_dist``): its mean
  (for the decoder; an encoder's distribution is read by
  :func:`~lightning_memwatch.callbacks.machinery.latent_views.latents_of`, or kept whole as the
  posterior of :class:`~lightning_memwatch.callbacks.likelihood.LikelihoodMonitor`).

The encoder's latents of any shape are then flattened, and the decoder given flat latents
reshaped to the recorded latent shape first
(:mod:`~lightning_memwatch.callbacks.machinery.latent_views`). The adapter is plain Python on the
inputs and outputs, so ``torch.func.jvp`` and ``vmap`` run through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from lightning_memwatch.callbacks.machinery.latent_views import flatten_latents, unflatten

#: The entry read from an output with several tensors (or distributions) when no
#: ``decoder_output=`` / ``encoder_output=`` names one: the first of these names it has.
PREFERRED_ENTRIES = {
    "decoder": (
        "sample",  # diffusers' DecoderOutput (a VQ model's also holds `commit_loss`)
        "reconstruction",
        "recon",
        "x_hat",
        "x_recon",
        "recon_x",
        "reconstructions",
    ),
    "encoder": (
        "latent_dist",  # diffusers' AutoencoderKLOutput
        "latents",  # diffusers' VQEncoderOutput
        "latent",
        "z",
        "posterior",
    ),
}


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
    found = {k: v for k, v in entries.items() if isinstance(v, Tensor) or _distribution_like(v)}
    if len(found) > 1:
        preferred = [name for name in PREFERRED_ENTRIES.get(site.role, ()) if name in found]
        if preferred:
            return found[preferred[0]]
    if len(found) != 1:
        raise OutputError(
            f"Expected {site.describe()} to return one tensor, or `{site.argument}=` to name "
            f"the entry to read, but its {type(output).__name__} has {listed or 'no entries'}: "
            f"pass `{site.argument}=` the name of the {_role_entry(site.role)}"
        )
    return next(iter(found.values()))


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
    """``fn`` with its output read by ``read``: ``Adapted(fn, read)(*args) == read(fn(*args))``;
    with ``reshape_to`` (a latent shape), the first argument (flat latents ``(B, m)``) is
    reshaped to ``(B, *reshape_to)`` first
    (:func:`~lightning_memwatch.callbacks.machinery.latent_views.unflatten`).

    Behaves as a bound method of the module behind ``fn`` (``__self__``), so that code that
    hooks the decoder's submodules (local complexity) finds them.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        read: Callable[[Any], Any],
        reshape_to: tuple[int, ...] | None = None,
    ) -> None:
        self.fn, self.read, self.reshape_to = fn, read, reshape_to
        self.__self__ = owner_module(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.reshape_to is not None and args:
            args = (unflatten(args[0], self.reshape_to), *args[1:])
        return self.read(self.fn(*args, **kwargs))

    def __repr__(self) -> str:
        return f"Adapted({self.fn!r})"


class FlatEncoder(Adapted):
    """``fn`` whose output's named (or only, or preferred) entry (:func:`select_output`) comes
    out on the flat view
    (:func:`~lightning_memwatch.callbacks.machinery.latent_views.flatten_latents`);
    ``latent_shape`` is the per-sample shape of the latents of its latest call."""

    def __init__(self, fn: Callable[..., Any], key: str | None, site: Site) -> None:
        super().__init__(fn, lambda output: select_output(output, key, site))
        self.latent_shape: tuple[int, ...] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        value, self.latent_shape = flatten_latents(super().__call__(*args, **kwargs))
        return value


def adapt_decoder(
    fn: Callable[..., Any],
    key: str | None,
    site: Site,
    latent_shape: tuple[int, ...] | None = None,
) -> Adapted:
    """``fn`` taking flat latents (reshaped to ``latent_shape``) whose outputs come out as
    tensors (:func:`output_tensor`)."""
    return Adapted(fn, lambda output: output_tensor(output, key, site), latent_shape)


def adapt_encoder(fn: Callable[..., Any], key: str | None, site: Site) -> FlatEncoder:
    """``fn`` whose outputs come out on the flat view (:class:`FlatEncoder`)."""
    return FlatEncoder(fn, key, site)
