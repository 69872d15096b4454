"""What a running measurement is doing, shown on the trainer's progress bar.

A first measurement can take seconds at the end of an epoch, where the progress bar would
otherwise just stop. :class:`MeasurementProgress` writes ``memwatch: <family>, chunk i of n``
into the bar the trainer shows at that moment (the training bar in ``fit``, the validation bar
in ``validate``): the postfix of Lightning's ``TQDMProgressBar``, the task description of its
``RichProgressBar``; what was there comes back when the measurement ends. With no progress bar
(``Trainer(enable_progress_bar=False)``), a disabled one, another kind of bar, or on a rank
other than 0 (where Lightning disables the bar), nothing is shown and nothing is printed.

Updates are throttled (a new family, or its first count of chunks, always shows; further chunks
at most every :data:`INTERVAL` seconds), so a measurement with many small chunks pays a few
terminal writes.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn

#: Seconds between two updates of the bar that only move a family's chunk count.
INTERVAL = 0.25


class _TqdmPostfix:
    """The postfix of a tqdm bar: ``v_num=0, train_loss=1.23, memwatch: ...``."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.saved = bar, bar.postfix

    def show(self, text: str) -> None:
        self.bar.set_postfix_str(f"{self.saved}, {text}" if self.saved else text, refresh=True)

    def restore(self) -> None:
        self.bar.set_postfix_str(self.saved or "", refresh=True)


class _RichDescription:
    """The description of a rich task: ``Epoch 3 · memwatch: ...``."""

    def __init__(self, callback: RichProgressBar, task_id: Any) -> None:
        self.callback, self.task_id = callback, task_id
        self.saved = callback.progress.tasks[task_id].description

    def show(self, text: str) -> None:
        from rich.markup import escape

        self.callback.progress.update(self.task_id, description=f"{self.saved} · {escape(text)}")
        self.callback.refresh()

    def restore(self) -> None:
        self.callback.progress.update(self.task_id, description=self.saved)
        self.callback.refresh()


def _display(trainer: pl.Trainer) -> _TqdmPostfix | _RichDescription | None:
    """Where the trainer's progress bar can show a line now, ``None`` where it cannot."""
    callback = trainer.progress_bar_callback
    if callback is None or not callback.is_enabled or not trainer.is_global_zero:
        return None
    fitting = trainer.state.fn == TrainerFn.FITTING
    if isinstance(callback, TQDMProgressBar):
        bar = callback._train_progress_bar if fitting else callback._val_progress_bar
        return None if bar is None or bar.disable else _TqdmPostfix(bar)
    if isinstance(callback, RichProgressBar) and callback.progress is not None:
        task_id = callback.train_progress_bar_id if fitting else callback.val_progress_bar_id
        return None if task_id is None else _RichDescription(callback, task_id)
    return None


class MeasurementProgress:
    """Shows a measurement's progress on ``trainer``'s progress bar; call it at each step.

    ``progress(family)`` says that ``family`` is being measured; ``progress(family, i, n)``
    that it is at chunk ``i`` of ``n`` (``unit`` names what is counted). :meth:`close` puts the
    bar's own text back. A ``MeasurementProgress(None)`` shows nothing; ``interval``: seconds
    between two updates within one family (default :data:`INTERVAL`).
    """

    def __init__(self, trainer: pl.Trainer | None, interval: float | None = None) -> None:
        self.display = None if trainer is None else _display(trainer)
        self.interval = INTERVAL if interval is None else interval
        self.shown = False
        self._kind: tuple | None = None
        self._last = -float("inf")

    def __call__(
        self, family: str, done: int | None = None, total: int | None = None, unit: str = "chunk"
    ) -> None:
        if self.display is None:
            return
        now = time.perf_counter()
        kind = (family, unit, total)
        if kind == self._kind and now - self._last < self.interval:
            return
        self._kind, self._last = kind, now
        text = f"memwatch: {family}"
        if done is not None and total is not None:
            text += f", {unit} {done} of {total}"
        self.display.show(text)
        self.shown = True

    def close(self) -> None:
        """Put the bar's own postfix or description back (if anything was shown)."""
        if self.display is not None and self.shown:
            self.display.restore()
        self.display = None


#: What a monitor calls outside a measurement: shows nothing.
NO_PROGRESS = MeasurementProgress(None)
