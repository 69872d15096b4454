"""MemorizationEarlyStopping in real (tiny) Lightning runs on the test device, driven by a
scripted monitor."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memwatch.callbacks import MemorizationEarlyStopping
from tests.devices import DEVICE, accelerator_for

KS = "memwatch/recovery/ks_pvalue"
GAP = "memwatch/recovery/mre_gap"
LOGGER = "lightning.pytorch.callbacks.memwatch"


class ScriptedMonitor(Callback):
    """A memwatch monitor stand-in: logs ``values[epoch]`` (``None``: skips that epoch).

    Implements the monitor protocol (``logged_keys``, ``last_logged_epoch``). ``values`` may be
    a dict ``{rank: values}`` for DDP; ``in_sanity`` also logs during the sanity check.
    """

    def __init__(self, values, key=KS, extra_keys=(), in_sanity=None) -> None:
        self.values = values
        self.key = key
        self.extra_keys = tuple(extra_keys)
        self.in_sanity = in_sanity
        self.last_logged_epoch: int | None = None

    @property
    def logged_keys(self) -> frozenset[str]:
        return frozenset({self.key, *self.extra_keys})

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking:
            value = self.in_sanity
        else:
            values = self.values
            if isinstance(values, dict):
                values = values[trainer.global_rank]
            value = values[epoch] if epoch < len(values) else None
        if value is None:
            return
        pl_module.log(self.key, float(value))
        self.last_logged_epoch = epoch


class TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class RecordingModule(TinyModule):
    """Writes each rank's final epoch and stopper state to ``out_dir`` (DDP runs)."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir

    def on_train_end(self) -> None:
        stopper = next(
            c for c in self.trainer.callbacks if isinstance(c, MemorizationEarlyStopping)
        )
        record = {"current_epoch": self.trainer.current_epoch, **stopper.state_dict()}
        path = Path(self.out_dir) / f"rank{self.trainer.global_rank}.json"
        path.write_text(json.dumps(record))


def loader(n: int = 8, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))
    return DataLoader(data, batch_size=batch_size)


def make_trainer(callbacks, max_epochs: int, **kwargs) -> L.Trainer:
    """A quiet ``Trainer`` on the test device; ``kwargs`` win."""
    options = {
        **accelerator_for(DEVICE),
        "logger": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
    }
    return L.Trainer(max_epochs=max_epochs, callbacks=callbacks, **{**options, **kwargs})


def fit(values, stopper, max_epochs: int = 8, model=None, ckpt_path=None, **kwargs):
    trainer = make_trainer([ScriptedMonitor(values, key=stopper.monitor), stopper], max_epochs)
    trainer.fit(model or TinyModule(), loader(), loader(), ckpt_path=ckpt_path, **kwargs)
    return trainer


LOW, HIGH = 0.001, 0.5  # ks p-values: memorization / none at threshold 0.01


@pytest.mark.parametrize(
    ("key", "mode", "threshold", "patience", "min_epochs", "values", "stop_epoch"),
    [
        (KS, "below", 0.01, 0, 0, [HIGH, HIGH, LOW, HIGH], 2),
        (KS, "below", 0.01, 2, 0, [LOW, HIGH, LOW, LOW, LOW, LOW], 4),
        (GAP, "above", 0.1, 0, 0, [0.0, 0.05, 0.2], 2),
        (GAP, "above", 0.1, 0, 0, [0.1, 0.1, 0.3], 2),  # equal is not beyond the threshold
        (GAP, "above", 0.1, 2, 0, [0.2, 0.2, 0.0, 0.2, 0.3, 0.4, 0.5], 5),
        (KS, "below", 0.01, 0, 3, [LOW] * 8, 3),  # min_epochs defers the stop
        (KS, "below", 0.01, 1, 4, [LOW] * 8, 4),  # checks before min_epochs count
        (KS, "below", 0.01, 2, 2, [LOW, HIGH, LOW, LOW, LOW, LOW], 4),  # and so do resets
    ],
)
def test_stops_at_expected_epoch(key, mode, threshold, patience, min_epochs, values, stop_epoch):
    stopper = MemorizationEarlyStopping(key, threshold, mode, patience, min_epochs)
    trainer = fit(values, stopper)
    assert stopper.stopped_epoch == stop_epoch
    assert stopper.fired_epoch == stop_epoch
    assert trainer.current_epoch == stop_epoch + 1  # the stopping epoch completes
    assert trainer.should_stop


def test_reason_is_logged_at_info(caplog):
    stopper = MemorizationEarlyStopping(KS, 0.01, "below")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        fit([HIGH, 0.004], stopper)
    message = stopper.stopping_reason_message
    for part in (KS, "0.004", "< 0.01", "'below'", "epoch 1"):
        assert part in message
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        message + " Signaling Trainer to stop."
    ]


def test_stale_values_neither_count_nor_reset():
    # callback_metrics keeps LOW through the skipped epochs 1 and 2; counting it would stop at
    # epoch 2, resetting on it would stop at epoch 5
    stopper = MemorizationEarlyStopping(KS, patience=2)
    fit([LOW, None, None, LOW, LOW, LOW, LOW], stopper)
    assert stopper.stopped_epoch == 4


def test_nan_is_ignored(caplog):
    # counted as memorization: stop at 2; as a reset: stop at 4
    stopper = MemorizationEarlyStopping(KS, patience=2)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        fit([LOW, math.nan, LOW, LOW, LOW, LOW], stopper)
    assert stopper.stopped_epoch == 3
    assert any("NaN in epoch 1" in r.getMessage() for r in caplog.records if r.name == LOGGER)


def test_never_stops_when_condition_never_holds():
    stopper = MemorizationEarlyStopping(KS, 0.01, "below")
    trainer = fit([HIGH, 0.01, 0.2, 1.0], stopper, max_epochs=4)
    assert trainer.current_epoch == 4
    assert not trainer.should_stop
    assert stopper.stopped_epoch is None
    assert stopper.fired_epoch is None
    assert stopper.stopping_reason_message is None


def test_report_only_records_but_trains_on(caplog):
    stopper = MemorizationEarlyStopping(KS, report_only=True)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        trainer = fit([HIGH, LOW, LOW, 0.002, HIGH], stopper, max_epochs=5)
    assert trainer.current_epoch == 5
    assert not trainer.should_stop
    assert stopper.fired_epoch == 1
    assert stopper.stopped_epoch is None
    assert "epoch 1" in stopper.stopping_reason_message  # the first firing is kept
    infos = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= 20]
    assert infos == [stopper.stopping_reason_message + " Reporting only."]


def test_one_check_per_epoch():
    # two validations per epoch would count epoch 0 twice and stop there
    stopper = MemorizationEarlyStopping(KS, patience=1)
    trainer = make_trainer([ScriptedMonitor([LOW, HIGH, LOW]), stopper], 3, val_check_interval=0.5)
    trainer.fit(TinyModule(), loader(batch_size=2), loader())
    assert stopper.fired_epoch is None
    assert stopper.consecutive == 1


def test_sanity_check_is_not_a_check():
    stopper = MemorizationEarlyStopping(KS)
    trainer = make_trainer([ScriptedMonitor([HIGH, HIGH], in_sanity=LOW), stopper], 2)
    trainer.fit(TinyModule(), loader(), loader())
    assert stopper.fired_epoch is None
    assert trainer.current_epoch == 2


def test_fast_dev_run_is_skipped():
    stopper = MemorizationEarlyStopping(KS)
    trainer = make_trainer([ScriptedMonitor([LOW]), stopper], 1, fast_dev_run=True)
    trainer.fit(TinyModule(), loader(), loader())
    assert stopper.fired_epoch is None
    assert stopper.consecutive == 0


class CountingMonitor(ScriptedMonitor):
    """Counts the ``setup`` calls it receives."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.setups = 0

    def setup(self, trainer, pl_module, stage) -> None:
        self.setups += 1


def test_listed_before_its_monitor_it_moves_after_it_and_every_setup_runs_once():
    """The stopper moves itself while Lightning loops over ``trainer.callbacks`` for ``setup``:
    an in-place move skipped the monitor's ``setup`` and ran the stopper's twice."""
    stopper = MemorizationEarlyStopping(KS, 0.01, "below")
    monitor = CountingMonitor([HIGH, LOW, LOW])
    bystander = CountingMonitor([HIGH] * 3, key="memwatch/other/value")
    calls = []
    original = stopper.setup
    stopper.setup = lambda *args, **kwargs: (calls.append(1), original(*args, **kwargs))
    trainer = make_trainer([stopper, monitor, bystander], max_epochs=3)
    trainer.fit(TinyModule(), loader(), loader())
    assert (len(calls), monitor.setups, bystander.setups) == (1, 1, 1)
    order = [c for c in trainer.callbacks if c in (stopper, monitor, bystander)]
    assert order == [monitor, stopper, bystander]
    assert stopper.stopped_epoch == 1  # it checked after the monitor logged, every epoch


def test_setup_lists_available_keys():
    monitor = ScriptedMonitor([LOW], key=GAP, extra_keys=(KS, "memwatch/recovery/mre/train"))
    stopper = MemorizationEarlyStopping("memwatch/spectrum/local_rank/gap")
    trainer = make_trainer([monitor, stopper], 1)
    listed = (
        "'memwatch/recovery/ks_pvalue', 'memwatch/recovery/mre/train', 'memwatch/recovery/mre_gap'"
    )
    match = re.escape("'memwatch/spectrum/local_rank/gap'") + ".*" + re.escape(listed)
    with pytest.raises(ValueError, match=match):
        trainer.fit(TinyModule(), loader(), loader())


def test_setup_without_monitor():
    trainer = make_trainer([MemorizationEarlyStopping(GAP)], 1)
    with pytest.raises(
        ValueError, match=r"mre_gap.*no memwatch monitor.*GeometryMonitor.*Recovery"
    ):
        trainer.fit(TinyModule(), loader(), loader())


def test_setup_checks_only_fit():
    stopper = MemorizationEarlyStopping(GAP)
    trainer = make_trainer([stopper], 1)
    trainer.validate(TinyModule(), loader(), verbose=False)
    assert stopper.consecutive == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"monitor": ""}, "monitor"),
        ({"monitor": "val_loss"}, "monitor"),
        ({"monitor": "memwatch/"}, "monitor"),
        ({"monitor": 3}, "monitor"),
        ({"threshold": math.nan}, "threshold"),
        ({"threshold": -math.inf}, "threshold"),
        ({"threshold": "0.01"}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"mode": "min"}, "mode"),
        ({"patience": -1}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"patience": True}, "patience"),
        ({"min_epochs": -2}, "min_epochs"),
        ({"min_epochs": 2.0}, "min_epochs"),
        ({"report_only": "yes"}, "report_only"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Expected `{name}` to be"):
        MemorizationEarlyStopping(**kwargs)


def test_numpy_arguments_are_accepted():
    stopper = MemorizationEarlyStopping(threshold=np.float32(0.5), patience=np.int64(2))
    assert type(stopper.threshold) is float and stopper.threshold == 0.5
    assert type(stopper.patience) is int and stopper.patience == 2


def test_state_key_includes_config():
    keys = {
        MemorizationEarlyStopping(KS, 0.01, "below").state_key,
        MemorizationEarlyStopping(GAP, 0.01, "below").state_key,
        MemorizationEarlyStopping(KS, 0.01, "above").state_key,
        MemorizationEarlyStopping(KS, 0.05, "below").state_key,
    }
    assert len(keys) == 4
    same = MemorizationEarlyStopping(KS, 0.01, "below", patience=3)
    assert same.state_key == MemorizationEarlyStopping(KS, 0.01, "below").state_key


def test_state_dict_round_trip():
    stopper = MemorizationEarlyStopping(KS, patience=3)
    fit([LOW, LOW], stopper, max_epochs=2)
    state = stopper.state_dict()
    assert state["consecutive"] == 2
    restored = MemorizationEarlyStopping(KS, patience=3)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    # the count carries on: epochs 0 and 1 of the next fit make four in a row (fresh: epoch 3)
    fit([LOW] * 6, restored, max_epochs=6)
    assert restored.fired_epoch == 1


def test_resume_from_checkpoint_continues_count(tmp_path):
    stopper = MemorizationEarlyStopping(KS, patience=3)
    trainer = fit([LOW, LOW], stopper, max_epochs=2)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    # without the restored count this would stop at epoch 5
    resumed = MemorizationEarlyStopping(KS, patience=3)
    trainer = fit([LOW] * 6, resumed, max_epochs=6, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.stopped_epoch == 3
    assert trainer.current_epoch == 4


def test_decision_goes_through_strategy(monkeypatch):
    stopper = MemorizationEarlyStopping(KS)
    trainer = make_trainer([ScriptedMonitor([HIGH, None, math.nan, LOW]), stopper], 6)
    calls = []

    def spy(decision, all=True):
        calls.append((decision, all))
        return decision

    monkeypatch.setattr(trainer.strategy, "reduce_boolean_decision", spy)
    trainer.fit(TinyModule(), loader(), loader())
    # called at every check, stale and NaN ones included, so every rank joins the collective
    assert calls == [(False, False), (False, False), (False, False), (True, False)]
    assert stopper.stopped_epoch == 3


def test_another_rank_can_stop_this_one(monkeypatch):
    stopper = MemorizationEarlyStopping(KS)
    trainer = make_trainer([ScriptedMonitor([HIGH] * 6), stopper], 6)
    monkeypatch.setattr(
        trainer.strategy,
        "reduce_boolean_decision",
        lambda decision, all=True: trainer.current_epoch == 2,
    )
    trainer.fit(TinyModule(), loader(), loader())
    assert stopper.stopped_epoch == 2
    assert trainer.current_epoch == 3
    assert stopper.stopping_reason_message == "Rule fired on another rank, epoch 2."


@pytest.mark.cpu_only(reason="two ddp_fork processes on the CPU (gloo); CUDA has one GPU here")
def test_ddp_ranks_stop_together(tmp_path):
    # rank 1 sees memorization at epoch 2, rank 0 never: both stop after epoch 2
    values = {0: [HIGH] * 6, 1: [HIGH, HIGH, LOW, HIGH, HIGH, HIGH]}
    stopper = MemorizationEarlyStopping(KS)
    trainer = make_trainer([ScriptedMonitor(values), stopper], 6, strategy="ddp_fork", devices=2)
    trainer.fit(RecordingModule(str(tmp_path)), loader(), loader())
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["current_epoch"] for r in records] == [3, 3]
    assert [r["stopped_epoch"] for r in records] == [2, 2]
    assert records[1]["stopping_reason_message"].startswith("Memorization: " + KS)
    assert records[0]["stopping_reason_message"] == "Rule fired on another rank, epoch 2."
