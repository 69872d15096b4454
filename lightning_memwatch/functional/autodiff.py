"""Differentiating any decoder that can be trained: forward mode where torch has the rules,
reverse mode where it has not.

The exact Jacobian ``J = df/dz`` (``n x m``) is cheap in forward mode: ``m`` Jacobian-vector
products (``torch.func.jvp``), against ``n`` vector-Jacobian products in reverse mode. Where
torch's default kernels lack a forward-mode rule (attention, GroupNorm on a channels-last
input) :func:`~lightning_memwatch.functional.kernels.forward_mode_kernels` routes around them.
Any other op without one (a custom ``torch.autograd.Function`` without ``jvp``, an op torch has
not covered) is differentiated by :func:`with_fallback` in reverse mode
(:mod:`~lightning_memwatch.functional.reverse`), down a ladder of :data:`MODES` that each
decoder descends at most once (the mode that worked is remembered per decoder), with one
:class:`AutodiffFallbackWarning` that names the op.
"""

from __future__ import annotations

import re
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")

#: How a Jacobian is computed, fastest first: forward mode (``vmap`` of ``torch.func.jvp`` over
#: the ``m`` basis tangents); reverse mode by ``vmap`` of ``torch.func.vjp`` over the ``n``
#: basis cotangents; the same by ``torch.autograd.grad(..., is_grads_batched=True)``, which also
#: takes a custom ``autograd.Function`` without ``setup_context`` (``torch.func`` refuses those);
#: one ``torch.autograd.grad`` per output element, for a backward that cannot run under ``vmap``.
MODES = ("forward", "vjp", "grad", "grad-loop")

_REMEMBERED: weakref.WeakKeyDictionary[Any, dict[Any, int]] = weakref.WeakKeyDictionary()
_ANNOUNCED: set[str] = set()


class AutodiffFallbackWarning(UserWarning):
    """A decoder's Jacobians are computed in reverse mode: an op in it has no forward-mode rule."""


def _identity(f: Callable[..., Any]) -> tuple[Any, Any] | None:
    """``(owner, route)`` that stays the same across calls for one decoder: the module behind a
    bound method (or a wrapper's ``__self__``) and the method's function; ``None`` when ``f``
    cannot be referenced weakly (then nothing is remembered)."""
    inner = f
    while hasattr(inner, "__wrapped__"):
        inner = inner.__wrapped__
    owner = getattr(inner, "__self__", None)
    if owner is None or isinstance(owner, type(torch)):  # builtins: __self__ is a module
        owner = inner
    try:
        weakref.ref(owner)
    except TypeError:
        return None
    return owner, getattr(inner, "__func__", None)


def remembered_mode(f: Callable[..., Any]) -> int:
    """Index in :data:`MODES` that ``f``'s Jacobians start from (``0``: forward mode)."""
    key = _identity(f)
    return 0 if key is None else _REMEMBERED.get(key[0], {}).get(key[1], 0)


def _remember(f: Callable[..., Any], mode: int) -> None:
    key = _identity(f)
    if key is not None:
        _REMEMBERED.setdefault(key[0], {})[key[1]] = mode


def failing_op(error: BaseException) -> str:
    """The op an autodiff error names: the aten op of "Trying to use forward AD with <op>",
    the class of a custom ``autograd.Function`` (read from the traceback), else the message."""
    message = str(error)
    found = re.search(r"forward AD with (\S+?)(?: that|\s|$)", message)
    if found:
        return found.group(1)
    if "autograd.Function" in message:
        tb = error.__traceback__
        while tb is not None:
            cls = tb.tb_frame.f_locals.get("cls")
            if isinstance(cls, type) and issubclass(cls, torch.autograd.Function):
                return f"the custom torch.autograd.Function {cls.__qualname__}"
            tb = tb.tb_next
        return "a custom torch.autograd.Function"
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"{type(error).__name__}: {first[:200]}"


def _name(f: Callable[..., Any]) -> str:
    """The decoder as its code names it: the method (``Model.decode``), the module's class, the
    function's qualified name."""
    key = _identity(f)
    owner, route = key if key is not None else (f, None)
    if route is not None:
        return route.__qualname__
    return getattr(owner, "__qualname__", type(owner).__name__)


def _announce(
    f: Callable[..., Any], z: Tensor, mode: int, start: int, error: BaseException
) -> None:
    """One :class:`AutodiffFallbackWarning` per message: the failing op, the mode that took over
    and its cost; the same decoder, op and sizes are not announced twice in a process."""
    devices = [z.device] if z.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        n = f(z[:1]).reshape(1, -1).shape[1]
    m = z.shape[1]
    how = {
        "vjp": "torch.func.vjp under vmap",
        "grad": "torch.autograd.grad with is_grads_batched",
        "grad-loop": "one torch.autograd.grad call per output element, a Python loop",
    }[MODES[mode]]
    tried = "forward mode (torch.func.jvp)" if start == 0 else f"{MODES[start]} mode"
    message = (
        f"Differentiating the decoder `{_name(f)}` in {tried} failed on {failing_op(error)}; "
        f"its Jacobians are computed in reverse mode instead ({how}): n = {n} vector-Jacobian "
        f"products per point instead of m = {m} Jacobian-vector products ({n / m:.3g}x as many "
        "passes; top-k spectra become exact spectra). The values are the same. To keep forward "
        "mode, give the op a forward-mode rule (a custom autograd.Function needs "
        "`setup_context` and `jvp`)"
    )
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
        warnings.warn(AutodiffFallbackWarning(message), stacklevel=3)


def with_fallback(
    f: Callable[..., Any], z: Tensor, attempts: Sequence[Callable[[], T]]
) -> tuple[T, int]:
    """``(attempts[i](), i)`` for the first mode ``i`` (of :data:`MODES`) that works, from the
    one remembered for ``f`` on; a mode that worked after a failure is remembered and announced.

    Only ``RuntimeError`` and ``NotImplementedError`` (what torch raises for a missing rule, a
    refused ``autograd.Function``, a ``.item()`` under ``vmap``) move to the next mode; an
    out-of-memory error and every other exception propagate at once. When the last mode fails
    too its error is raised, chained to the first one.
    """
    start = remembered_mode(f)
    first: BaseException | None = None
    for mode in range(start, len(attempts)):
        try:
            result = attempts[mode]()
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError) as error:
            if mode == len(attempts) - 1:
                if first is not None and first is not error:
                    raise error from first
                raise
            first = first or error
            continue
        if mode > start:
            _remember(f, mode)
            _announce(f, z, mode, start, first)
        return result, mode
    raise AssertionError("unreachable")  # pragma: no cover


def fallback_attempts(
    forward: Callable[[], T], reverse: Callable[[str], T]
) -> list[Callable[[], T]]:
    """``forward``, then ``reverse(mode)`` per reverse mode, as :func:`with_fallback` takes."""
    return [forward, *(lambda mode=mode: reverse(mode) for mode in MODES[1:])]
