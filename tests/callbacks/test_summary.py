"""The verdict printed at the end of a fit (and on an interrupt), its dict, its TensorBoard
text, and what the budget does that the summary reports: families it could never afford,
monitors a reader combines measured at the same epochs, nothing logged at unmeasured epochs."""

from __future__ import annotations

import logging
import math
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from lightning_memwatch.callbacks import (
    EffectAgreement,
    GeometryMonitor,
    MemorizationEarlyStopping,
    RecoveryMonitor,
    SampleMonitor,
)
from lightning_memwatch.callbacks.machinery.summary import TEXT_TAG, fit_summary
from lightning_memwatch.callbacks.machinery.summary_text import summary_lines
from tests.conftest import digits_loaders, make_autoencoder, quiet_trainer, read_events


class Console(logging.Handler):
    """What the memwatch logger hands Lightning's console handler."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def console():
    handler = Console()
    logger = logging.getLogger("lightning.pytorch.callbacks.memwatch")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def snippet(**common):
    """README's snippet on the test autoencoder (encoder ``encode``)."""
    common = {"encoder": "encode", "probe_size": 12, **common}
    return [
        GeometryMonitor(families=("spectrum",), radii=(0.1, 0.2), **common),
        RecoveryMonitor(steps=5, **common),
        EffectAgreement(),
        MemorizationEarlyStopping("memwatch/agreement/bound", threshold=0.3, mode="above"),
    ]


def fit(callbacks, max_epochs=3, **kwargs):
    L.seed_everything(0, verbose=False)
    train, val = digits_loaders()
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=max_epochs, **kwargs)
    trainer.fit(make_autoencoder(), train, val)
    return trainer


def summaries(console: Console) -> list[str]:
    return [m for m in console.messages if m.startswith("memwatch summary")]


def test_summary_printed_once_at_fit_end_with_the_logged_values(console, tmp_path):
    callbacks = snippet(max_overhead=math.inf)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = fit(callbacks, logger=logger)
    geometry, recovery, agreement, stopper = callbacks
    printed = summaries(console)
    assert len(printed) == 1  # four memwatch callbacks, one summary
    summary = fit_summary(trainer)
    assert printed[0] == "\n  ".join(summary_lines(summary))
    assert [s["callback"] for s in summary["callbacks"]] == [
        "GeometryMonitor",
        "RecoveryMonitor",
        "EffectAgreement",
        "MemorizationEarlyStopping",
    ]
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    # every epoch measured on the whole probe (budget off): the last values are the logged ones
    mine = geometry.summary()
    assert (mine["measured_epochs"], mine["epochs"], mine["probe_share"]) == (3, 3, 1.0)
    psi = mine["values"]["spectrum/psi"]
    for name, key in (
        ("train", "train"),
        ("val", "val"),
        ("gap", "gap"),
        ("bound", "effect_upper"),
    ):
        assert psi[name] == pytest.approx(metrics[f"memwatch/spectrum/log_volume/{key}"], rel=1e-6)
    mre = recovery.summary(trainer)["values"]["recovery/MRE"]
    assert mre["train"] == pytest.approx(metrics["memwatch/recovery/mre/train"], rel=1e-6)
    assert mre["gap"] == pytest.approx(metrics["memwatch/recovery/mre_gap"], rel=1e-6)
    assert mre["bound"] == pytest.approx(metrics["memwatch/recovery/effect_upper"], rel=1e-6)
    assert agreement.summary()["last_bound"] == pytest.approx(
        metrics["memwatch/agreement/bound"], rel=1e-6
    )
    rule = stopper.summary()
    assert rule["checks"] == 3 and rule["last_value"] == pytest.approx(
        metrics["memwatch/agreement/bound"], rel=1e-6
    )
    assert rule["state"] == ("fired" if stopper.fired_epoch is not None else "not fired")
    # the seconds are the monitors' books
    assert mine["seconds"] == pytest.approx(geometry.budget.spent_seconds)
    assert summary["seconds"] == pytest.approx(
        geometry.budget.spent_seconds + recovery.budget.spent_seconds
    )
    # and the same lines as a TensorBoard text entry at the last step
    events = read_events(tmp_path / "run" / "version_0")
    (entry,) = events.Tensors(f"{TEXT_TAG}/text_summary")
    text = entry.tensor_proto.string_val[0].decode()
    assert text == "\n".join(f"- {line}" for line in summary_lines(summary))


class Interrupt(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_summary_printed_once_on_keyboard_interrupt(console):
    callbacks = snippet(max_overhead=math.inf)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown exits
            fit([*callbacks, Interrupt()], max_epochs=5)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after one
    (printed,) = summaries(console)
    assert printed.startswith("memwatch summary (stopped by KeyboardInterrupt): 1 epochs")
    assert "GeometryMonitor: measured 2 of 1 epochs" in printed  # epoch 1 was measured, unended


def test_a_family_the_budget_can_never_afford_is_skipped_and_named(console):
    """Three short epochs earn a few milliseconds at 1 %: no measurement of the spectrum is
    predicted to fit, none is made, and the summary names it with the setting to change."""
    cb = GeometryMonitor(encoder="encode", probe_size=12, families=("spectrum",), max_overhead=0.01)
    trainer = fit([cb])
    assert cb.measurements == 0 and "memwatch/spectrum/log_volume/train" not in (
        trainer.callback_metrics
    )
    assert trainer.callback_metrics["memwatch/spectrum/probe_size"].item() == 0.0
    mine = cb.summary()
    never = mine["never_affordable"]["spectrum"]
    assert never["predicted_seconds"] > never["earned_seconds"]
    assert mine["advice"]["setting"] == "max_overhead" and mine["advice"]["value"] > 0.01
    (printed,) = summaries(console)
    assert "never affordable in this run: spectrum" in printed
    assert f"pass max_overhead={mine['advice']['value']:g}" in printed


class Measured(L.Callback):
    """The epochs at which each monitor logged."""

    def __init__(self, monitors) -> None:
        self.monitors, self.epochs = monitors, {id(m): [] for m in monitors}

    def on_train_epoch_end(self, trainer, pl_module):
        for m in self.monitors:
            if m.last_logged_epoch == trainer.current_epoch:
                self.epochs[id(m)].append(trainer.current_epoch)


class Epoch(L.Callback):
    def __init__(self) -> None:
        self.now = -1

    def on_train_epoch_start(self, trainer, pl_module):
        self.now = trainer.current_epoch


@pytest.mark.parametrize("recovery_never", [False, True])
def test_monitors_a_reader_combines_measure_at_the_same_epochs(recovery_never):
    """The geometry monitor could measure at every epoch, the recovery monitor at even epochs
    only: both measure at the even epochs, where EffectAgreement has both to combine. A
    recovery monitor that can never afford a measurement in the run holds nobody back."""
    from lightning_memwatch.callbacks.machinery.budget import Plan

    callbacks = snippet(max_overhead=0.05)
    geometry, recovery = callbacks[:2]
    epoch = Epoch()
    geometry.budget.decide = lambda figures=None: Plan(12, ("spectrum",))

    def recovery_plan(figures=None):
        if recovery_never:
            return Plan(0, ())
        return Plan(12, ("recovery",)) if epoch.now % 2 == 0 else Plan(0, ("recovery",))

    recovery.budget.decide = recovery_plan
    seen = Measured([geometry, recovery])
    fit([epoch, *callbacks, seen], max_epochs=5, num_sanity_val_steps=0)
    measured = {name: seen.epochs[id(m)] for name, m in (("g", geometry), ("r", recovery))}
    if recovery_never:
        assert measured == {"g": [0, 1, 2, 3, 4], "r": []}
    else:
        assert measured == {"g": [0, 2, 4], "r": [0, 2, 4]}
        assert callbacks[2].logged == 3  # a bound at every one of them


class Metrics(Logger):
    """Every ``log_metrics`` call a Lightning logger receives."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, float]] = []

    name, version = "metrics", 0

    @property
    def experiment(self):
        return None

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append(dict(metrics))


def test_an_unmeasured_epoch_logs_nothing():
    cb = GeometryMonitor(encoder="encode", probe_size=12, families=("spectrum",), radii=(0.1, 0.2))
    sizes = iter([12, 0, 0, 12])
    cb.budget.next_probe_size = lambda: next(sizes)
    logger = Metrics()
    fit([cb], max_epochs=4, logger=logger, num_sanity_val_steps=0)
    logged = [c.get("epoch") for c in logger.calls if "memwatch/spectrum/probe_size" in c]
    assert logged == [0, 3]
    assert all(
        torch.isfinite(torch.tensor(c["memwatch/spectrum/seconds"]))
        for c in logger.calls
        if "memwatch/spectrum/seconds" in c
    )


def test_training_is_bit_identical_with_the_budgeted_snippet():
    """The budget's train-start timing of the decoder (dropout and BatchNorm in it), its waits
    and its measurements leave training as it was: same losses, same weights."""

    def run(callbacks):
        L.seed_everything(0, verbose=False)
        model = make_autoencoder()
        train, val = digits_loaders()
        quiet_trainer(callbacks=callbacks, max_epochs=4).fit(model, train, val)
        return model

    callbacks = snippet(max_overhead=1e6)  # finite: timed, planned, always affordable
    plain, watched = run([]), run(callbacks)
    assert callbacks[0].budget.units is not None and callbacks[1].measurements > 0
    assert plain.losses == watched.losses
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_monitor_without_per_sample_tables_reports_no_probe_share(console):
    """SampleMonitor measures C_T over cells, not probe rows: after 2 measured epochs its
    summary has ``probe_share`` None and its line names the probe without a share; a
    GeometryMonitor beside it covers its whole probe (100 %)."""
    samples = SampleMonitor(probe_size=12, reference_size=24, num_generated=24, cells=2,
                            max_overhead=math.inf)  # fmt: skip
    geometry = GeometryMonitor(
        encoder="encode", probe_size=12, families=("spectrum",), max_overhead=math.inf
    )
    fit([geometry, samples], max_epochs=2)
    assert samples.measurements == 2 and samples.summary()["probe_share"] is None
    assert geometry.summary()["probe_share"] == 1.0
    lines = summaries(console)[0].splitlines()
    line = next(x for x in lines if x.strip().startswith("SampleMonitor:"))
    assert "of its 12 + 12 probe" not in line and "its 12 + 12 probe" in line
    assert any("100 % of its 12 + 12 probe" in x for x in lines if "GeometryMonitor:" in x)
