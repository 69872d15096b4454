"""The verdict at the end of a fit: one summary of every memwatch callback of a trainer.

At the end of every fit (``on_fit_end``), and when one stops on an exception or a
``KeyboardInterrupt`` (``on_exception``), the first memwatch callback that gets there prints one
short summary for all of them, on global rank zero: through the ``lightning.pytorch`` logger,
where Lightning's own messages show
(:mod:`~lightning_memwatch.callbacks.machinery.decisions`), and as TensorBoard text (tag
:data:`TEXT_TAG`). Per monitor: the epochs it measured and the share of its probe covered, the
last train / val / gap / effect bound of each family, the seconds it spent and their share of
the run; the families its budget could never afford, and for a monitor left nearly silent
(fewer than :data:`NEARLY_SILENT` measurements) the one setting to change with its predicted
cost. Per rule: ``MemorizationEarlyStopping``'s state (fired at epoch N / not fired / could not
be evaluated) and ``EffectAgreement``'s last bound.

The same as a dict: ``summary()`` on each callback, :func:`fit_summary` for all of a trainer.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import lightning.pytorch as pl

from lightning_memwatch.callbacks.machinery.budget import MIN_PROBE
from lightning_memwatch.callbacks.machinery.clock import run_clock
from lightning_memwatch.callbacks.machinery.decisions import log, tensorboard_writers
from lightning_memwatch.callbacks.machinery.hooks import SkipsUnusedHooks
from lightning_memwatch.callbacks.machinery.summary_text import summary_lines
from lightning_memwatch.viz import global_step

#: TensorBoard text tag of the summary.
TEXT_TAG = "memwatch/summary"
#: A monitor with fewer measurements than this in a fit gets the setting to change.
NEARLY_SILENT = 3
#: The advice aims at this many measurements of the smallest slice over a run like this one.
TARGET_MEASUREMENTS = 10
#: Per family, what the summary shows: ``(label, train, val, gap, effect bound)`` keys under
#: ``memwatch/<family>/`` (the bound on the memorization side, as ``EffectAgreement`` reads it).
HEADLINES: dict[str, tuple[tuple[str, ...], ...]] = {
    "spectrum": (
        ("psi", "log_volume/train", "log_volume/val", "log_volume/gap", "log_volume/effect_upper"),
    ),
    "density": (
        ("dip", "dip/train", "dip/val", "dip/gap", "dip/effect_lower"),
        ("decay", "decay/train", "decay/val", "decay/gap", "decay/effect_upper"),
    ),
    "recovery": (("MRE", "mre/train", "mre/val", "mre_gap", "effect_upper"),),
    "likelihood": (("log p(x)", "train", "val", "gap", "effect_lower"),),
    "complexity": (("complexity", "train", "val", "gap", "effect"),),
    "samples": (("C_T", "", "", "ct", ""),),
    "diffusion/loss": (("denoising loss", "train", "val", "gap", "effect_upper"),),
    "diffusion/spectrum": (
        ("psi", "log_volume/train", "log_volume/val", "log_volume/gap", "log_volume/effect_upper"),
    ),
    "diffusion/samples": (
        ("C_T", "", "", "ct", ""),
        ("near-copy share", "", "", "near_copy_share", ""),
    ),
}

#: Per trainer: whether this fit's summary was printed.
_REPORTED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
#: Per callback: the trainer it was last set up with (kept out of the callback, which DDP
#: spawn pickles).
_TRAINERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
#: The summary's logger: a child of the stopper's, under Lightning's console handler.
summary_log = log.getChild("summary")


def remember_trainer(callback: Any, trainer: pl.Trainer) -> None:
    """``callback`` was set up with ``trainer`` (its ``summary()`` reads it by default)."""
    _TRAINERS[callback] = weakref.ref(trainer)


def last_trainer(callback: Any) -> pl.Trainer:
    """The trainer ``callback`` was last set up with."""
    ref = _TRAINERS.get(callback)
    trainer = ref() if ref is not None else None
    if trainer is None:
        raise ValueError(
            f"Expected {type(callback).__name__} to have been attached to a Trainer for its "
            "summary but it was not: call `trainer.fit` first, or pass the trainer"
        )
    return trainer


def epochs_done(trainer: pl.Trainer) -> int:
    """Training epochs completed in this trainer (a resumed run counts the earlier ones)."""
    return trainer.fit_loop.epoch_progress.current.completed


def _round_up(value: float) -> float:
    """``value`` rounded up to two significant digits (``0.1234 -> 0.13``)."""
    if value <= 0 or not math.isfinite(value):
        return value
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / scale - 1e-9) * scale


def family_values(family: str, scalars: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """The headline values of ``family`` in ``scalars`` (a monitor's last logged values)."""
    out = {}
    names = ("train", "val", "gap", "bound")
    for label, *keys in HEADLINES.get(family, ()):
        got = {
            n: scalars.get(f"memwatch/{family}/{k}") if k else None
            for n, k in zip(names, keys, strict=True)
        }
        if any(v is not None for v in got.values()):
            out[f"{family}/{label}"] = {**got, "bound_key": keys[3] or None}
    return out


def monitor_summary(monitor: Any, trainer: pl.Trainer) -> dict[str, Any]:
    """:meth:`MemwatchMonitor.summary <lightning_memwatch.callbacks.machinery.monitor.
    MemwatchMonitor.summary>` (see the module docstring)."""
    budget, clock = monitor.budget, monitor.budget.clock
    clock.catch_up()
    tables = [monitor.tables[f] for f in monitor.families if f in monitor.tables]
    covered = [float(t.measured(s).double().mean()) for t in tables for s in t.epochs]
    values: dict[str, Any] = {}
    for family in monitor.families:
        values.update(family_values(family, monitor.last_scalars))
    spent, run = budget.spent_seconds, clock.run_seconds
    floor = min(MIN_PROBE, monitor.effective_probe_size)
    out: dict[str, Any] = {
        "callback": type(monitor).__name__,
        "families": tuple(monitor.families),
        "epochs": epochs_done(trainer),
        "measured_epochs": monitor.measurements,
        "last_epoch": monitor.last_logged_epoch,
        "probe_size": monitor.effective_probe_size,
        # None: measured, but into no per-sample table (SampleMonitor's C_T is one of cells)
        "probe_share": (
            None if monitor.measurements and not tables else min(covered) if covered else 0.0
        ),
        "values": values,
        "seconds": spent,
        "train_start_seconds": budget.start_seconds,
        "share": spent / run if run > 0 else 0.0,
        "max_overhead": monitor.max_overhead,
        "never_affordable": {
            f: {"size": floor, "predicted_seconds": cost, "earned_seconds": max(end, 0.0)}
            for f, (cost, end) in budget.never.items()
        },
        "advice": None,
    }
    if monitor.measurements < NEARLY_SILENT:
        out["advice"] = _advice(monitor, trainer)
    return out


def _advice(monitor: Any, trainer: pl.Trainer) -> dict[str, Any] | None:
    """The one setting that gives a nearly silent monitor :data:`TARGET_MEASUREMENTS`
    measurements on a run like this one, and what they are predicted to cost."""
    budget, clock = monitor.budget, monitor.budget.clock
    floor = min(MIN_PROBE, monitor.effective_probe_size)
    if budget.units is not None:
        each = budget.predict(floor, tuple(monitor.families))
    elif budget.seconds_per_sample is not None:
        each = budget.predicted(floor)
    else:
        return None
    epochs = epochs_done(trainer)
    if monitor.max_overhead == math.inf:
        if epochs < NEARLY_SILENT * monitor.every_n_epochs:
            return None
        every = max(1, epochs // TARGET_MEASUREMENTS)
        setting, value, seconds = "every_n_epochs", every, each * (epochs // every)
    else:
        run = clock.run_seconds
        if run <= 0:
            return None
        seconds = budget.start_seconds + TARGET_MEASUREMENTS * each
        setting, value = "max_overhead", _round_up(seconds * len(clock.max_overheads) / run)
    return {
        "setting": setting,
        "value": value,
        "measurements": TARGET_MEASUREMENTS,
        "size": floor,
        "predicted_seconds": seconds,
    }


def rule_summary(stopper: Any) -> dict[str, Any]:
    """``MemorizationEarlyStopping.summary()``: the rule, its checks and its state."""
    symbol = "<" if stopper.mode == "below" else ">"
    needed = stopper.patience + 1
    if stopper.fired_epoch is not None:
        state = "fired"
    else:
        state = "not fired" if stopper.checks >= needed else "not evaluated"
    return {
        "callback": type(stopper).__name__,
        "rule": f"{stopper.monitor} {symbol} {stopper.threshold:g}",
        "monitor": stopper.monitor,
        "threshold": stopper.threshold,
        "mode": stopper.mode,
        "state": state,
        "checks": stopper.checks,
        "needed_checks": needed,
        "last_value": stopper.last_value,
        "fired_epoch": stopper.fired_epoch,
        "stopped_epoch": stopper.stopped_epoch,
        "report_only": stopper.report_only,
    }


def fit_summary(trainer: pl.Trainer) -> dict[str, Any]:
    """The summary of every memwatch callback of ``trainer`` as a dict: ``run_seconds`` (the
    run outside the monitors), ``seconds`` and ``share`` (all monitors together),
    ``max_overhead``, ``epochs``, and per callback its ``summary()`` under ``callbacks``.

    Example::

        >>> import lightning as L
        >>> fit_summary(L.Trainer(logger=False))["callbacks"]
        []
    """
    clock = run_clock(trainer)
    clock.catch_up()
    spent = sum(clock.spent.values())
    return {
        "epochs": epochs_done(trainer),
        "run_seconds": clock.run_seconds,
        "seconds": spent,
        "share": spent / clock.run_seconds if clock.run_seconds > 0 else 0.0,
        "max_overhead": clock.max_overhead,
        "callbacks": [cb.summary(trainer) for cb in memwatch_callbacks(trainer)],
    }


def memwatch_callbacks(trainer: pl.Trainer) -> list[Any]:
    """The trainer's callbacks from this package that summarize themselves."""
    return [
        cb
        for cb in trainer.callbacks
        if type(cb).__module__.startswith("lightning_memwatch")
        and callable(getattr(cb, "summary", None))
    ]


class FitVerdict(SkipsUnusedHooks):
    """The hooks every memwatch callback shares to print the summary once per fit (mixed into
    the monitors and the rules; the hooks a callback does not implement are not called:
    :mod:`~lightning_memwatch.callbacks.machinery.hooks`)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fit_started(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        report(trainer, f"stopped by {type(exception).__name__}")


def fit_started(trainer: pl.Trainer) -> None:
    """A fit starts: its summary is still to print (called by every memwatch callback)."""
    _REPORTED[trainer] = False


def report(trainer: pl.Trainer, reason: str = "") -> None:
    """Print and write the summary of ``trainer``'s memwatch callbacks once per fit."""
    if _REPORTED.get(trainer, False):
        return
    _REPORTED[trainer] = True
    if not trainer.is_global_zero:
        return
    lines = summary_lines(fit_summary(trainer), reason)
    summary_log.info("\n  ".join(lines))
    for writer in tensorboard_writers(trainer):
        writer.add_text(TEXT_TAG, "\n".join(f"- {line}" for line in lines), global_step(trainer))
        writer.flush()
