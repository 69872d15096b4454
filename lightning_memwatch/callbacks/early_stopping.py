"""Stop training once a memwatch metric crosses a memorization threshold.

Modelled on Lightning's ``lightning/pytorch/callbacks/early_stopping.py``: configuration plus
one check after validation, state in ``state_dict`` and a stop decision that goes through
``trainer.strategy.reduce_boolean_decision`` so that every rank stops at the same epoch. Its
decisions are visible: the reason is printed as ``EarlyStopping``'s is, and logged (a scalar at
every check, a TensorBoard text entry when the rule fires).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from lightning_memwatch.callbacks.machinery.decisions import (
    PREFIX,
    TRIGGERED_KEY,
    announce,
    check_count,
    check_distinct_log_keys,
    check_key,
    lay_out,
    log,
    log_decision,
    write_text,
)
from lightning_memwatch.callbacks.machinery.readers import place_after_sources
from lightning_memwatch.callbacks.machinery.summary import FitVerdict, rule_summary

_SYMBOL = {"below": "<", "above": ">"}


class MemorizationEarlyStopping(FitVerdict, Callback):
    """Stop training when a memwatch metric says the model memorizes its training set.

    The memorization condition is ``value < threshold`` (``mode="below"``, e.g. the KS p-value
    of Webster et al. (2019), sec. 3.3, ``p < 0.01``) or ``value > threshold``
    (``mode="above"``, e.g. ``memwatch/recovery/mre_gap > 0.10``, Webster et al. (2019), eq. 5).
    Training stops once the condition has held at ``patience + 1`` consecutive fresh checks and
    ``trainer.current_epoch >= min_epochs``. Checks before ``min_epochs`` count toward the run;
    only the stop waits. A check where the condition does not hold resets the count.

    A check runs in ``on_validation_end`` and at the end of every training epoch (monitors measure
    there when an epoch does not validate), except while sanity checking, under ``fast_dev_run``
    and outside ``trainer.fit``; at most one check counts per epoch. At setup the stopper moves
    itself after the monitor it reads in ``trainer.callbacks``, so that it sees that monitor's
    values of the same hook. A check is *fresh* only if the monitor that logs ``monitor`` logged
    it in the current epoch: ``trainer.callback_metrics`` keeps a value from an earlier epoch
    when a monitor skips one (``every_n_epochs``, its cost budget). Stale values and NaN values
    (no measurement, not a signal either way) neither count nor reset; both are noted at debug
    level.

    When the rule fires (with ``report_only``, the first time), the reason (key, value, rule,
    epoch) is printed as Lightning's ``EarlyStopping`` message is, and written to TensorBoard as
    text (:mod:`~lightning_memwatch.callbacks.machinery.decisions`). An epoch that counts a check
    logs ``log_key``: 1.0 when the rule fired at that check, 0.0 when not.

    Monitor protocol: a callback in ``trainer.callbacks`` that logs memwatch keys exposes

    - ``logged_keys`` (``frozenset[str]``): every key it can log, available from construction;
    - ``last_logged_epoch`` (``int | None``): the ``trainer.current_epoch`` at which it last
      logged, ``None`` before it first did.

    ``setup`` (fit) fails, listing the keys the monitors can log, when none logs ``monitor``.

    Args:
        monitor: key to watch, a ``memwatch/...`` key (default ``"memwatch/recovery/ks_pvalue"``).
        threshold: finite value the metric is compared with (default ``0.01``).
        mode: ``"below"`` (default): memorization when ``value < threshold``; ``"above"``: when
            ``value > threshold``.
        patience: consecutive fresh checks with the condition held, beyond the first, before
            stopping (default ``0``: stop at the first).
        min_epochs: earliest ``trainer.current_epoch`` at which to stop (default ``0``).
            Like Lightning's ``EarlyStopping``, the count of consecutive checks is state of the
            instance: a stopper reused for a second ``fit`` carries it over (make a new one, or
            resume from a checkpoint, for a fresh count).
        report_only: when ``True``, evaluate the rule, record and log ``fired_epoch`` and
            ``stopping_reason_message``, but do not set ``trainer.should_stop`` (default ``False``).
        log_key: key of the logged decision (default ``"memwatch/early_stopping/triggered"``);
            two stoppers in one ``Trainer`` need distinct ones (checked at setup).

    Attributes:
        consecutive: fresh checks in a row, up to the last one, at which the condition held.
        fired_epoch: first epoch at which the rule fired (on any rank), ``None`` if it never did.
        stopped_epoch: epoch at which training was told to stop, ``None`` if it was not (unlike
            Lightning's ``0``: epoch 0 is a possible stop).
        stopping_reason_message: why the rule fired: key, value, threshold, mode and epoch.

    Example::

        >>> stopper = MemorizationEarlyStopping("memwatch/recovery/mre_gap", 0.1, mode="above")
        >>> stopper.state_key
        "MemorizationEarlyStopping{'monitor': 'memwatch/recovery/mre_gap', 'mode': 'above', ...}"
        >>> MemorizationEarlyStopping(mode="min")
        Traceback (most recent call last):
        ...
        ValueError: Expected `mode` to be one of ('below', 'above') but got 'min'
    """

    def __init__(
        self,
        monitor: str = "memwatch/recovery/ks_pvalue",
        threshold: float = 0.01,
        mode: str = "below",
        patience: int = 0,
        min_epochs: int = 0,
        report_only: bool = False,
        *,
        log_key: str = TRIGGERED_KEY,
    ) -> None:
        super().__init__()
        check_key("monitor", monitor, "memwatch/recovery/ks_pvalue")
        if (
            not isinstance(threshold, numbers.Real)
            or isinstance(threshold, bool)
            or not math.isfinite(threshold)
        ):
            raise ValueError(
                f"Expected `threshold` to be a finite real number but got {threshold!r}"
            )
        if mode not in _SYMBOL:
            raise ValueError(f"Expected `mode` to be one of {tuple(_SYMBOL)} but got {mode!r}")
        if not isinstance(report_only, bool):
            raise ValueError(f"Expected `report_only` to be a bool but got {report_only!r}")
        self.log_key = check_key("log_key", log_key, TRIGGERED_KEY)
        self.monitor = monitor
        self.threshold = float(threshold)
        self.mode = mode
        self.patience = check_count("patience", patience)
        self.min_epochs = check_count("min_epochs", min_epochs)
        self.report_only = report_only
        self.consecutive = 0
        self.checks = 0  # fresh checks counted, and the value of the latest
        self.last_value: float | None = None
        self._last_checked_epoch: int | None = None
        self._validated_epoch: int | None = None
        self.fired_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.stopping_reason_message: str | None = None
        self._decision: tuple[int, bool] | None = None  # (epoch, fired) of the latest check
        self._text: str | None = None  # the message to write to TensorBoard at the epoch's end

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor, mode=self.mode, threshold=self.threshold
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "checks": self.checks,
            "consecutive": self.consecutive,
            "fired_epoch": self.fired_epoch,
            "stopped_epoch": self.stopped_epoch,
            "stopping_reason_message": self.stopping_reason_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.consecutive = state_dict["consecutive"]
        self.checks = state_dict.get("checks", 0)
        self.fired_epoch = state_dict["fired_epoch"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.stopping_reason_message = state_dict["stopping_reason_message"]

    def _owner(self, trainer: pl.Trainer) -> Callback | None:
        """The attached callback whose ``logged_keys`` contain ``monitor`` (looked up once per
        list of callbacks: a check runs at every epoch)."""
        cached = self.__dict__.get("_owner_of")
        if cached is not None and cached[0] is trainer.callbacks:
            return cached[1]
        owner = next(
            (
                cb
                for cb in trainer.callbacks
                if cb is not self and self.monitor in getattr(cb, "logged_keys", ())
            ),
            None,
        )
        self._owner_of = (trainer.callbacks, owner)
        return owner

    def memwatch_sources(self, trainer: pl.Trainer) -> list[Callback]:
        """The callback this stopper reads (it must run after it in the same hook)."""
        owner = self._owner(trainer)
        return [] if owner is None else [owner]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_distinct_log_keys(self, trainer.callbacks)
        owner = self._owner(trainer)
        place_after_sources(trainer)  # check after the monitor logged, in the same hook
        if stage != TrainerFn.FITTING or owner is not None:
            return
        keys = sorted(
            key
            for callback in trainer.callbacks
            for key in getattr(callback, "logged_keys", ())
            if key.startswith(PREFIX)
        )
        if keys:
            raise ValueError(
                f"`MemorizationEarlyStopping(monitor={self.monitor!r})`: no attached monitor logs"
                f" this key. Pass one of {', '.join(map(repr, keys))} as `monitor`, or attach the"
                " monitor that logs it."
            )
        raise ValueError(
            f"`MemorizationEarlyStopping(monitor={self.monitor!r})`: no memwatch monitor is"
            " attached. Add the `GeometryMonitor` or `RecoveryMonitor` that logs this key to"
            " `Trainer(callbacks=[...])`."
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_checked_epoch = None  # epochs restart in a new fit; a resume goes past it
        self._validated_epoch = None
        self._decision = self._text = None
        super().on_fit_start(trainer, pl_module)  # the summary is still to print

    def summary(self, trainer: pl.Trainer | None = None) -> dict[str, Any]:
        """The rule and its state: fired at an epoch, not fired, or not evaluated (fewer fresh
        checks than ``patience + 1``), its ``checks`` and ``last_value``."""
        return rule_summary(self)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put ``log_key`` on TensorBoard's custom-scalars layout, beside the monitors' keys."""
        lay_out(trainer, self.log_key)

    def _should_skip_check(self, trainer: pl.Trainer) -> bool:
        return (
            trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or bool(trainer.fast_dev_run)
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check an epoch without validation (measured at its end); log the epoch's decision."""
        if self._validated_epoch != trainer.current_epoch:
            self.on_validation_end(trainer, pl_module)
        if not self._should_skip_check(trainer):
            decision = self._decision
            fired = decision[1] if decision and decision[0] == trainer.current_epoch else None
            log_decision(trainer, pl_module, self.log_key, fired)
            if self._text is not None:
                write_text(trainer, self._text)
                self._text = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip_check(trainer):
            return
        self._validated_epoch = trainer.current_epoch
        epoch = trainer.current_epoch
        reason = self._evaluate(trainer)
        # every rank reaches this call at every check, whatever its own value, so that no rank
        # waits alone in the collective; a rule that fires on any rank stops them all
        fired = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
        if fired or self._last_checked_epoch == epoch:
            # a second validation of the epoch keeps a firing of the first
            self._decision = (epoch, fired or self._decision == (epoch, True))
        if not fired:
            return
        first = self.fired_epoch is None
        if first or not self.report_only:
            self.stopping_reason_message = reason or f"Rule fired on another rank, epoch {epoch}."
            suffix = " Reporting only." if self.report_only else " Signaling Trainer to stop."
            self._text = self.stopping_reason_message + suffix
            announce(trainer, self._text)
        if first:
            self.fired_epoch = epoch
        if not self.report_only:
            self.stopped_epoch = epoch
            trainer.should_stop = True

    def _evaluate(self, trainer: pl.Trainer) -> str | None:
        """Count this epoch's check; why the rule fires on this rank, or ``None``."""
        epoch = trainer.current_epoch
        owner = self._owner(trainer)
        if owner is None or getattr(owner, "last_logged_epoch", None) != epoch:
            log.debug(f"{self.monitor} was not logged in epoch {epoch}: stale, not checked")
            return None
        if self._last_checked_epoch == epoch:
            log.debug(f"{self.monitor} was already checked in epoch {epoch}")
            return None
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            log.debug(f"{self.monitor} is not in `trainer.callback_metrics` in epoch {epoch}")
            return None
        value = torch.as_tensor(value).squeeze()
        if torch.isnan(value):
            log.debug(f"{self.monitor} is NaN in epoch {epoch}: ignored")
            return None
        self._last_checked_epoch = epoch
        self.checks, self.last_value = self.checks + 1, value.item()
        # compared at the precision it was logged in (float32 0.1 is not above 0.1), like
        # Lightning's EarlyStopping
        compare = torch.lt if self.mode == "below" else torch.gt
        held = bool(compare(value, self.threshold))
        self.consecutive = self.consecutive + 1 if held else 0
        if self.consecutive <= self.patience or epoch < self.min_epochs:
            return None
        condition = f"{value.item():.6g} {_SYMBOL[self.mode]} {self.threshold:g}"
        return (
            f"Memorization: {self.monitor} = {condition} (mode={self.mode!r})"
            f" at {self.consecutive} consecutive checks, epoch {epoch}."
        )
