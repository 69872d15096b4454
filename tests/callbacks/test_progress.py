"""A measurement shows what it measures on the trainer's progress bar, and nothing without one."""

from __future__ import annotations

import io
import math

import pytest
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from lightning_memwatch.callbacks import GeometryMonitor, LikelihoodMonitor, RecoveryMonitor
from lightning_memwatch.callbacks.machinery import progress as progress_module
from lightning_memwatch.callbacks.machinery.latents import CHUNK
from lightning_memwatch.callbacks.machinery.progress import MeasurementProgress
from tests.conftest import DigitsDataModule, digits_loaders, make_autoencoder, quiet_trainer


class RecordingTqdm(Tqdm):
    """Lightning's tqdm bar, writing to a buffer and keeping every postfix it was given."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)
        self.postfixes: list[str] = []

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfixes.append(s)
        super().set_postfix_str(s, refresh)


class RecordingBar(TQDMProgressBar):
    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        self.recording = RecordingTqdm(
            desc=bar.desc, total=bar.total, leave=True, dynamic_ncols=True, bar_format=None
        )
        bar.close()
        return self.recording


class RecordingValidationBar(TQDMProgressBar):
    def init_validation_tqdm(self) -> Tqdm:
        bar = super().init_validation_tqdm()
        self.recording = RecordingTqdm(desc=bar.desc, total=bar.total, leave=True)
        bar.close()
        return self.recording


def fit(callbacks, bar=None, epochs: int = 1):
    """A short fit with ``callbacks``; with the progress bar ``bar``, else with none."""
    trainer = quiet_trainer(
        max_epochs=epochs,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, *([] if bar is None else [bar])],
        enable_progress_bar=bar is not None,
    )
    trainer.fit(make_autoencoder(), *digits_loaders(n_train=96, n_val=96))
    return trainer


def recovery(probe_size: int = CHUNK + 8) -> RecoveryMonitor:
    """Two chunks a split (``CHUNK`` + 8 samples): four chunks a measurement."""
    return RecoveryMonitor(probe_size=probe_size, steps=2, max_overhead=math.inf)


def memwatch_lines(postfixes: list[str]) -> list[str]:
    return [p.split("memwatch: ", 1)[1] for p in postfixes if "memwatch: " in p]


def test_tqdm_postfix_names_the_family_and_the_chunk_then_gives_the_bar_back(monkeypatch):
    monkeypatch.setattr(progress_module, "INTERVAL", 0.0)  # every update shows
    bar = RecordingBar()
    fit([recovery()], bar)
    postfixes = bar.recording.postfixes
    chunks = [f"recovery, chunk {i} of 4" for i in range(1, 5)]
    assert memwatch_lines(postfixes) == ["recovery", *chunks]  # no logger: no TensorBoard step
    # the bar's own postfix (Lightning's metrics) comes first, and comes back after
    first = next(i for i, p in enumerate(postfixes) if "memwatch" in p)
    last = max(i for i, p in enumerate(postfixes) if "memwatch" in p)
    own = postfixes[first].split("memwatch: ")[0].rstrip(", ")
    assert postfixes[last + 1] == own


def test_every_monitor_family_is_named_while_it_is_measured(monkeypatch):
    monkeypatch.setattr(progress_module, "INTERVAL", 0.0)
    bar = RecordingBar()
    geometry = GeometryMonitor(encoder="encode", probe_size=8, max_overhead=math.inf)
    likelihood = LikelihoodMonitor(
        encoder="encode", probe_size=8, num_samples=2, max_overhead=math.inf, likelihood="gaussian"
    )
    fit([geometry, likelihood], bar)
    lines = memwatch_lines(bar.recording.postfixes)
    assert [line for line in lines if "," not in line] == ["spectrum", "density", "likelihood"]
    for family in ("spectrum", "density", "likelihood"):
        assert f"{family}, split 1 of 2" in lines and f"{family}, split 2 of 2" in lines


def test_updates_within_a_family_are_throttled(monkeypatch):
    clock = iter([0.0, 0.05, 0.1, 0.2, 0.3, 0.31, 0.6])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    shown = []
    progress = MeasurementProgress(None, interval=0.25)
    progress.display = type("Display", (), {"show": lambda self, text: shown.append(text)})()
    progress("recovery")  # t=0: shown
    progress("recovery", 1, 4)  # t=0.05: the first count of chunks always shows
    progress("recovery", 2, 4)  # t=0.1: too soon
    progress("spectrum")  # t=0.2: a new family always shows
    progress("spectrum", 1, 9)  # t=0.3: its first count
    progress("spectrum", 2, 9)  # t=0.31: too soon
    progress("spectrum", 3, 9)  # t=0.6: the interval has passed
    assert shown == [
        "memwatch: recovery",
        "memwatch: recovery, chunk 1 of 4",
        "memwatch: spectrum",
        "memwatch: spectrum, chunk 1 of 9",
        "memwatch: spectrum, chunk 3 of 9",
    ]


def test_the_real_tqdm_bar_prints_it(capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "INTERVAL", 0.0)
    fit([recovery()], TQDMProgressBar())
    out = capsys.readouterr().out
    assert "memwatch: recovery, chunk 4 of 4" in out


def test_nothing_is_printed_without_a_progress_bar(capfd):
    monitor = recovery()
    fit([monitor], None)
    assert monitor.measurements == 1
    captured = capfd.readouterr()
    assert "memwatch" not in captured.out + captured.err


def test_nothing_is_printed_with_a_disabled_bar(capfd, monkeypatch):
    monkeypatch.setattr(progress_module, "INTERVAL", 0.0)
    monitor = recovery()
    fit([monitor], TQDMProgressBar(refresh_rate=0))
    assert monitor.measurements == 1
    captured = capfd.readouterr()
    assert "memwatch" not in captured.out + captured.err


def test_rich_task_description_names_the_chunk_then_gives_it_back(monkeypatch):
    pytest.importorskip("rich")
    monkeypatch.setattr(progress_module, "INTERVAL", 0.0)

    class RecordingRich(RichProgressBar):
        def __init__(self) -> None:
            super().__init__(console_kwargs={"file": io.StringIO()})
            self.descriptions: list[str] = []

        def refresh(self, hard: bool = False) -> None:
            if self.progress is not None and self.train_progress_bar_id is not None:
                self.descriptions.append(
                    self.progress.tasks[self.train_progress_bar_id].description
                )
            super().refresh(hard)

    bar = RecordingRich()
    fit([recovery()], bar)
    lines = [d.split("memwatch: ", 1)[1] for d in bar.descriptions if "memwatch: " in d]
    assert [f"recovery, chunk {i} of 4" for i in range(1, 5)] == lines[1:5]
    last = max(i for i, d in enumerate(bar.descriptions) if "memwatch" in d)
    assert "memwatch" not in bar.descriptions[last + 1]
    first = next(i for i, d in enumerate(bar.descriptions) if "memwatch" in d)
    assert bar.descriptions[last + 1] == bar.descriptions[first].split(" · memwatch")[0]
    assert bar.descriptions[last + 1].startswith("Epoch 0")


def test_validate_shows_it_on_the_validation_bar(monkeypatch):
    monkeypatch.setattr(progress_module, "INTERVAL", 0.0)
    bar = RecordingValidationBar()
    monitor = recovery()
    trainer = quiet_trainer(callbacks=[monitor, bar], enable_progress_bar=True)
    data = DigitsDataModule(n_train=96, n_val=96)  # the probe's training digits come from it
    trainer.validate(make_autoencoder(), datamodule=data, verbose=False)
    assert monitor.measurements == 1
    lines = memwatch_lines(bar.recording.postfixes)
    assert lines == ["recovery", *(f"recovery, chunk {i} of 4" for i in range(1, 5))]
    assert "memwatch" not in bar.recording.postfixes[-1]
