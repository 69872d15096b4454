"""The monitors beside Lightning's own readers of ``trainer.callback_metrics``.

``ModelCheckpoint`` and ``EarlyStopping`` read ``trainer.callback_metrics`` at every check. A
monitor that does not measure an epoch (its ``every_n_epochs``, its cost budget) takes its keys
out of it (:func:`drop_stale`), so an older value is never scored as the epoch's; the readers
that cannot work with that fail at setup and say what to change (:func:`check_lightning_readers`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.warnings import PossibleUserWarning


def silence_sync_dist_advice() -> None:
    """The values a monitor logs are already the same on every rank (the metrics gather the
    per-sample values), so Lightning's advice to reduce them with ``sync_dist=True`` does not
    apply; it would repeat for every memwatch key of every DDP fit. Only that advice, only for
    ``memwatch/`` keys, is filtered (at every monitor's setup: idempotent)."""
    warnings.filterwarnings(
        "ignore", message=r".*self\.log\('memwatch/.*sync_dist=True", category=PossibleUserWarning
    )


def check_lightning_readers(monitor: Any, trainer: pl.Trainer) -> None:
    """Lightning's ``ModelCheckpoint`` and ``EarlyStopping`` read ``trainer.callback_metrics``
    at every check. An epoch this monitor does not measure has none of its values there
    (:func:`drop_stale`), so a reader of one of its keys must check only when it measures
    (``ModelCheckpoint``) or tolerate a missing value (``EarlyStopping(strict=False)``)."""
    keys = {k for k in monitor.logged_keys if not k.endswith("/probe_size")}
    name = type(monitor).__name__
    for callback in trainer.callbacks:
        key = getattr(callback, "monitor", None)
        if key not in keys:
            continue
        if isinstance(callback, ModelCheckpoint):
            every = callback._every_n_epochs
            if monitor.max_overhead != math.inf or every % monitor.every_n_epochs:
                raise ValueError(
                    f"`ModelCheckpoint(monitor={key!r})` scores a checkpoint with the value of "
                    f"its epoch, but {name}(max_overhead={monitor.max_overhead}, every_n_epochs="
                    f"{monitor.every_n_epochs}) does not measure at every epoch it checks "
                    f"(every_n_epochs={every}): pass `max_overhead=float('inf')` to {name} "
                    "and the same `every_n_epochs` to both"
                )
        elif isinstance(callback, EarlyStopping) and callback.strict:
            skips = monitor.max_overhead != math.inf or monitor.every_n_epochs > 1
            if skips:
                raise ValueError(
                    f"`EarlyStopping(monitor={key!r})` fails on an epoch without the value, "
                    f"and {name}(max_overhead={monitor.max_overhead}, every_n_epochs="
                    f"{monitor.every_n_epochs}) skips epochs: pass `strict=False` to "
                    "EarlyStopping (it then checks the epochs that were measured), or use "
                    "`MemorizationEarlyStopping`"
                )


def keys_by_family(monitor: Any) -> dict[str, tuple[str, ...]]:
    """``monitor``'s keys per family, ``probe_size`` left out (what an unmeasured epoch takes
    out of ``trainer.callback_metrics``); kept on the monitor until its next setup (``_keys``)."""
    if getattr(monitor, "_keys", None) is None:
        keys: dict[str, list[str]] = {}
        for key in sorted(monitor.logged_keys):
            if not key.endswith("/probe_size"):
                keys.setdefault(key.split("/")[1], []).append(key)
        monitor._keys = {family: tuple(k) for family, k in keys.items()}
    return monitor._keys


def drop_stale(monitor: Any, trainer: pl.Trainer, keep: tuple[str, ...] = ()) -> None:
    """Take this monitor's earlier values out of ``trainer.callback_metrics`` (but those of
    the families in ``keep``): an epoch that is not measured must not show ``ModelCheckpoint``
    or ``EarlyStopping`` an old value as if it were this epoch's."""
    metrics = trainer.callback_metrics
    for family, keys in keys_by_family(monitor).items():
        if family not in keep:
            for key in keys:
                metrics.pop(key, None)


def measured_together(monitor: Any, trainer: pl.Trainer) -> list[Any]:
    """The other monitors that a reader of several (``EffectAgreement``: a callback whose
    ``memwatch_sources(trainer)`` lists more than one) combines with ``monitor`` at the same
    epoch: they measure at the same epochs, or the reader has nothing to combine."""
    together: list[Any] = []
    for callback in trainer.callbacks:
        sources = getattr(callback, "memwatch_sources", None)
        if not callable(sources):
            continue
        found = sources(trainer)
        if len(found) > 1 and any(source is monitor for source in found):
            together += [s for s in found if s is not monitor and s not in together]
    return together


def place_after_sources(trainer: pl.Trainer) -> None:
    """Reorder ``trainer.callbacks`` so that every memwatch reader comes after the callbacks it
    reads, keeping the given order otherwise.

    A reader (``MemorizationEarlyStopping``, ``EffectAgreement``) has a method
    ``memwatch_sources(trainer)`` returning the callbacks whose values it reads in the same
    hook; it must run after them. Every reader calls this in its ``setup``; each call orders
    all readers, so the last one leaves a consistent order whatever the user's. Lightning is
    looping over ``trainer.callbacks`` while it calls ``setup``, so the new order goes into a
    new list: moving a callback within that list would skip the one after it.
    """
    callbacks = list(trainer.callbacks)
    ordered: list[Any] = []
    visiting: set[int] = set()

    def visit(callback: Any) -> None:
        if callback in ordered or id(callback) in visiting:
            return
        visiting.add(id(callback))
        sources = getattr(callback, "memwatch_sources", None)
        for source in sources(trainer) if callable(sources) else ():
            if source in callbacks:
                visit(source)
        visiting.discard(id(callback))
        ordered.append(callback)

    for callback in callbacks:
        visit(callback)
    if ordered != callbacks:
        trainer.callbacks = ordered
