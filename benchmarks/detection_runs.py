"""One training run of ``benchmarks/detection.py``, recorded per epoch and per measurement.

The class module (``detection_classes.py``) builds the model, the data and the monitors;
:class:`Recorder` keeps, at the end of every training epoch, the generator steps (batches) so
far, the wall time so far (training and monitors, the ground truth's own time left out), the
held-out loss, the class's ground truth (every epoch, or at the measurement epochs when it is
expensive) and, at every epoch a monitor measured, every logged ``memwatch/`` key and every
per-sample value of its rolling tables.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import lightning as L
from detection_classes import ModelClass, Options, number
from digits_vae import cpu_trainer
from lightning.pytorch.callbacks import Callback

#: Bumped when a run's record changes; cached runs of another version are trained again.
VERSION = 2


class Recorder(Callback):
    """Per epoch: ``{"epoch", "batches", "seconds", "val_loss", "truth"}``; per measurement
    epoch, a check ``{"epoch", "scalars", "samples"}`` (NaN: a table row not measured yet)."""

    def __init__(self, model_class: ModelClass, monitors: list[Any], data: Any, fast: bool) -> None:
        self.model_class, self.monitors, self.data, self.fast = model_class, monitors, data, fast
        self.epochs: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.batches = 0
        self.start = 0.0
        self.truth_seconds = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.batches += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        seconds = time.perf_counter() - self.start - self.truth_seconds
        metrics = trainer.callback_metrics
        measured = [m for m in self.monitors if m.last_logged_epoch == epoch]
        truth: dict[str, float] = {}
        if self.model_class.truth_every_epoch or measured:
            begin = time.perf_counter()
            truth = self.model_class.truth(pl_module, self.data, self.fast)
            self.truth_seconds += time.perf_counter() - begin
        val_key = self.model_class.val_key
        val_loss = number(metrics.get("val_loss")) if val_key is None else truth.get(val_key)
        record = {"epoch": epoch, "batches": self.batches, "seconds": seconds}
        self.epochs.append({**record, "val_loss": number(val_loss), "truth": truth})
        if not measured:
            return
        keys = set().union(*(m.logged_keys for m in measured))
        check: dict[str, Any] = {
            "epoch": epoch,
            "scalars": {k: number(v) for k, v in metrics.items() if k in keys},
            "samples": {},
        }
        for monitor in measured:
            for family, table in getattr(monitor, "tables", {}).items():
                for name, splits in table.values.items():
                    for split, values in splits.items():
                        check["samples"][f"{family}/{name}/{split}"] = values.tolist()
        self.checks.append(check)


def train(model_class: ModelClass, kind: str, options: Options) -> dict[str, Any]:
    """One run: its per-epoch record, its checks and its cost."""
    plan = model_class.plan(kind, options.fast)
    L.seed_everything(options.seed, verbose=False)
    model, data = model_class.model_and_data(plan, options.seed)
    watched = model_class.monitors(plan, options)
    recorder = Recorder(model_class, watched, data, options.fast)
    trainer = cpu_trainer(plan.epochs, False, [*watched, recorder])
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start - recorder.truth_seconds
    return {
        "version": VERSION,
        "model_class": model_class.name,
        "kind": kind,
        "seed": options.seed,
        "budget": options.budget,
        "probe": options.probe,
        "radii": options.radii,
        "plan": plan._asdict(),
        "val_loss": [e["val_loss"] for e in recorder.epochs],
        "epochs": recorder.epochs,
        "checks": recorder.checks,
        "seconds": seconds,
        "truth_seconds": recorder.truth_seconds,
        "measurements": {
            type(m).__name__: m.measurements for m in watched if hasattr(m, "measurements")
        },
    }
