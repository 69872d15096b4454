"""Which attribute of the LightningModule is the decoder, the encoder, the preprocessing.

Monitors name them by attribute (plain strings, so a LightningCLI YAML can set them), dotted
for wrapped models (``"model.decoder"``). ``"auto"`` (for ``decoder=`` and ``encoder=``) picks
the first of the usual names (:data:`USUAL_NAMES`) that the module has: a module with an
``encode()`` method and a ``decoder`` submodule (the demo's VAE) and one with ``encoder`` /
``decoder`` submodules (an ordinary conv autoencoder) both attach with the same line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from torch import nn

#: The value of ``decoder=`` / ``encoder=`` that picks the attribute from :data:`USUAL_NAMES`.
AUTO = "auto"
#: The attribute names ``"auto"`` tries, in this order, per role.
USUAL_NAMES = {"decoder": ("decode", "decoder", "generator"), "encoder": ("encode", "encoder")}


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
    auto = ""
    if argument in USUAL_NAMES:
        usual = ", ".join(f"`{usual}`" for usual in USUAL_NAMES[argument])
        auto = f", or `{argument}='auto'` for the first of {usual} that the module has"
    for part in name.split("."):
        if not hasattr(value, part):
            raise ValueError(
                f"Expected the LightningModule to have a `{name}` attribute for the {role} but "
                f"{path} has no `{part}`{_members(value)}: pass `{argument}=` the name of the "
                f"attribute (module or method, dotted for a submodule) that is the {role}{auto}"
            )
        value = getattr(value, part)
        path = f"{path}.{part}"
    if not callable(value):
        raise ValueError(
            f"Expected `{path}` (the {role}) to be callable but got {type(value).__name__}: name "
            "a module or a method"
        )
    return value


def _own_methods(module: Any) -> list[str]:
    """The public methods of ``module``'s class that ``LightningModule`` does not define."""
    names: list[str] = []
    for cls in type(module).__mro__:
        for name, value in vars(cls).items():
            known = hasattr(pl.LightningModule, name) or name in names
            if callable(value) and not name.startswith("_") and not known:
                names.append(name)
    return names


def auto_attribute(
    module: nn.Module, role: str, monitor: str, required: bool = False
) -> tuple[str | None, str]:
    """The attribute ``"auto"`` picks for ``role`` (``"decoder"`` or ``"encoder"``): the first of
    :data:`USUAL_NAMES` that ``module`` has (callable), and the sentence that says so (the
    monitor logs it at info level). No encoder is ``None`` (latents then come from latent
    recovery) unless ``required``; no decoder (or no required encoder) is a ``ValueError``
    that lists the module's submodules and methods.

    Example::

        >>> from torch import nn
        >>> class AE(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.encoder, self.decoder = nn.Linear(4, 2), nn.Linear(2, 4)
        >>> auto_attribute(AE(), "decoder", "GeometryMonitor")[0]
        'decoder'
    """
    usual = USUAL_NAMES[role]
    found = [name for name in usual if callable(getattr(module, name, None))]
    kind, listed = type(module).__name__, ", ".join(f"`{name}`" for name in usual)
    if found:
        also = f" (it also has `{found[1]}`)" if len(found) > 1 else ""
        return found[0], (
            f"{monitor}({role}='auto') uses `{found[0]}`: the first of {listed} that {kind} "
            f"has{also}; pass `{role}=` to name another"
        )
    if role == "encoder" and not required:
        return None, (
            f"{monitor}(encoder='auto') measures without an encoder: {kind} has none of "
            f"{listed}, so the probe's latents come from latent recovery; pass `encoder=` to "
            "name one"
        )
    methods = ", ".join(_own_methods(module)[:12])
    raise ValueError(
        f"Expected the LightningModule to have one of {listed} for {monitor}({role}='auto') but "
        f"{kind} has none{_members(module)}{f' (its methods: {methods})' if methods else ''}: pass "
        f"`{role}=` the name of the attribute (module or method, dotted for a submodule) that "
        f"maps {'latents to outputs' if role == 'decoder' else 'inputs to latents'}"
    )
