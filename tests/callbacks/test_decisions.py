"""MemorizationEarlyStopping's decisions where a user sees them: the console (Lightning's logger),
the event files (a scalar per check, a text entry when it fires) and ``callback_metrics``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.plugins.custom_scalar import layout_pb2

from lightning_memwatch.callbacks import MemorizationEarlyStopping
from tests.callbacks.test_early_stopping import (
    HIGH,
    KS,
    LOW,
    ScriptedMonitor,
    TinyModule,
    loader,
)
from tests.conftest import read_events
from tests.devices import DEVICE, accelerator_for

KEY = "memwatch/early_stopping/triggered"
TEXT = "memwatch/early_stopping/text_summary"  # TensorBoard's tag for add_text("...early_stopping")
ROOT = Path(__file__).resolve().parents[2]


class MetricsAtEpochStart(Callback):
    """``trainer.callback_metrics`` as the next epoch (and the end of fit) sees them."""

    def __init__(self, key: str = KEY) -> None:
        self.key, self.seen = key, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            self.seen.append(trainer.callback_metrics.get(self.key))

    def on_train_end(self, trainer, pl_module) -> None:
        self.seen.append(trainer.callback_metrics.get(self.key))


def fit_logged(tmp_path: Path, values, stopper, max_epochs: int, *extra: Callback) -> L.Trainer:
    logger = TensorBoardLogger(str(tmp_path), name="run", default_hp_metric=False)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=[ScriptedMonitor(values, key=stopper.monitor), stopper, *extra],
        **accelerator_for(DEVICE),
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(TinyModule(), loader(), loader())
    return trainer


def by_epoch(acc, tag: str) -> list[tuple[int, float]]:
    """``[(epoch, value)]`` of a scalar tag, the epoch read from Lightning's ``epoch`` scalar."""
    epoch_at = {e.step: int(e.value) for e in acc.Scalars("epoch")}
    return [(epoch_at[e.step], e.value) for e in acc.Scalars(tag)]


def texts(acc) -> list[tuple[int, str]]:
    if TEXT not in acc.Tags()["tensors"]:
        return []
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(TEXT)]


def test_stop_is_logged_as_scalar_per_check_and_one_text_entry(tmp_path):
    stopper = MemorizationEarlyStopping(KS, 0.01)
    seen = MetricsAtEpochStart()
    trainer = fit_logged(tmp_path, [HIGH, None, HIGH, LOW, HIGH], stopper, 6, seen)
    assert stopper.stopped_epoch == 3
    acc = read_events(trainer.logger.log_dir)
    # checks at epochs 0, 2 and 3 (epoch 1 was not measured), the rule fired at 3
    assert by_epoch(acc, KEY) == [(0, 0.0), (2, 0.0), (3, 1.0)]
    step_of_fire = acc.Scalars(KEY)[-1].step
    assert texts(acc) == [
        (step_of_fire, stopper.stopping_reason_message + " Signaling Trainer to stop.")
    ]
    for part in (KS, "= 0.001 < 0.01", "mode='below'", "epoch 3"):
        assert part in texts(acc)[0][1]
    # the value of a check, absent after an epoch without one (no stale value for readers)
    assert [None if v is None else float(v) for v in seen.seen] == [0.0, None, 0.0, 1.0]
    # the scalar is on the custom-scalars layout, in its own category
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    charts = {c.title: [chart.multiline.tag for chart in c.chart] for c in layout.category}
    assert charts["memwatch/early_stopping"] == [[f"^{KEY}$"]]


def test_report_only_logs_every_check_and_its_first_firing_once(tmp_path):
    stopper = MemorizationEarlyStopping(KS, 0.01, report_only=True)
    trainer = fit_logged(tmp_path, [HIGH, LOW, LOW, HIGH, LOW], stopper, 5)
    assert trainer.current_epoch == 5 and stopper.fired_epoch == 1
    acc = read_events(trainer.logger.log_dir)
    assert by_epoch(acc, KEY) == [(0, 0.0), (1, 1.0), (2, 1.0), (3, 0.0), (4, 1.0)]
    ((step, text),) = texts(acc)
    assert step == acc.Scalars(KEY)[1].step
    assert text == stopper.stopping_reason_message + " Reporting only."
    assert "epoch 1" in text


def test_patience_logs_zero_until_the_rule_fires(tmp_path):
    stopper = MemorizationEarlyStopping(KS, 0.01, patience=1, report_only=True)
    trainer = fit_logged(tmp_path, [LOW, HIGH, LOW, LOW], stopper, 4)
    acc = read_events(trainer.logger.log_dir)
    # the condition holds at 0, 2 and 3; the rule (two in a row) only at 3
    assert by_epoch(acc, KEY) == [(0, 0.0), (1, 0.0), (2, 0.0), (3, 1.0)]
    assert [step for step, _ in texts(acc)] == [acc.Scalars(KEY)[-1].step]


def test_two_stoppers_need_distinct_log_keys(tmp_path):
    gap = "memwatch/recovery/mre_gap"
    first = MemorizationEarlyStopping(KS, report_only=True)
    second = MemorizationEarlyStopping(gap, 0.1, "above", report_only=True)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[ScriptedMonitor([HIGH]), ScriptedMonitor([0.0], key=gap), first, second],
        **accelerator_for(DEVICE),
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    with pytest.raises(
        ValueError, match=r"both log their decision as .*Pass a distinct `log_key=`"
    ):
        trainer.fit(TinyModule(), loader(), loader())

    second = MemorizationEarlyStopping(gap, 0.1, "above", report_only=True, log_key=f"{KEY}_gap")
    seen, seen_gap = MetricsAtEpochStart(), MetricsAtEpochStart(f"{KEY}_gap")
    monitors = [ScriptedMonitor([HIGH, LOW]), ScriptedMonitor([0.0, 0.5], key=gap)]
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[*monitors, first, second, seen, seen_gap],
        **accelerator_for(DEVICE),
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(TinyModule(), loader(), loader())
    assert [float(v) for v in seen.seen] == [0.0, 1.0]
    assert [float(v) for v in seen_gap.seen] == [0.0, 1.0]


@pytest.mark.parametrize("log_key", ["early_stopping/triggered", "memwatch/", 1])
def test_log_key_must_be_a_memwatch_key(log_key):
    with pytest.raises(ValueError, match=r"Expected `log_key` to be a metric key starting with"):
        MemorizationEarlyStopping(log_key=log_key)


SCRIPT = """
import sys
sys.path.insert(0, "examples")
import lightning as L
from digits_vae import quiet
from lightning_memwatch import MemorizationEarlyStopping
from tests.callbacks.test_early_stopping import ScriptedMonitor, TinyModule, loader

stopper = MemorizationEarlyStopping(report_only=True)
with quiet():
    trainer = L.Trainer(
        max_epochs=3, callbacks=[ScriptedMonitor([0.5, 0.001, 0.001]), stopper],
        logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(TinyModule(), loader(), loader())
print("REASON:", stopper.stopping_reason_message)
"""


def test_message_reaches_the_console_of_a_plain_python_run_under_the_examples_quiet():
    """A fresh interpreter, as ``python examples/vae_memorization.py`` runs: Lightning's own
    console handler prints the reason on stderr; the examples' ``quiet`` hides only the set-up
    lines (``GPU available``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    reason = done.stdout.split("REASON: ", 1)[1].strip()
    assert "epoch 1" in reason and KS in reason
    lines = done.stderr.splitlines()
    assert lines.count(reason + " Reporting only.") == 1
    assert not any("GPU available" in line for line in lines)
