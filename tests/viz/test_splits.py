"""Train and val as two TensorBoard runs: what is written where, read back by TensorBoard."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from lightning_memwatch.viz.splits import split_run_dirs, split_scalars, write_split_scalars
from tests.conftest import read_events


def test_split_scalars_keeps_the_train_and_val_keys_under_their_stem() -> None:
    scalars = {
        "memwatch/recovery/mre/train": torch.tensor(0.25),
        "memwatch/recovery/mre/val": 0.5,
        "memwatch/recovery/mre_gap": 0.5,
        "memwatch/density/dip/prior/val": -1,
        "memwatch/spectrum/log_volume/gap": 3.0,
        "memwatch/likelihood/train": -7.5,
        "train": 1.0,  # no stem: not a split of anything
    }
    assert split_scalars(scalars) == {
        "train": {"memwatch/recovery/mre": 0.25, "memwatch/likelihood": -7.5},
        "val": {"memwatch/recovery/mre": 0.5, "memwatch/density/dip/prior": -1.0},
    }
    assert split_scalars({"memwatch/recovery/seconds": 1.0}) == {}


def test_split_runs_are_appended_to_one_file_each_and_read_back(tmp_path: Path) -> None:
    writer = SummaryWriter(log_dir=str(tmp_path))
    values = {0: (0.5, 1.5), 4: (0.25, 1.75), 9: (float("nan"), 2.0)}
    for step, (train, val) in values.items():
        scalars = {"memwatch/x/mre/train": train, "memwatch/x/mre/val": val, "memwatch/x/gap": 1.0}
        write_split_scalars(writer, scalars, step)
    writer.close()
    for index, split in enumerate(("train", "val")):
        folder = tmp_path / split
        (event_file,) = folder.iterdir()  # one file per run and process, appended to
        assert "tfevents" in event_file.name
        run = read_events(folder)
        assert run.Tags()["scalars"] == ["memwatch/x/mre"]  # the gap stays in the logger's run
        read = [(e.step, e.value) for e in run.Scalars("memwatch/x/mre")]
        expected = [(step, pair[index]) for step, pair in values.items()]
        assert [step for step, _ in read] == [step for step, _ in expected]
        torch.testing.assert_close(
            torch.tensor([v for _, v in read]),
            torch.tensor([v for _, v in expected]),
            equal_nan=True,
        )
    assert "memwatch/x/mre/train" not in read_events(tmp_path).Tags()["scalars"]


def test_tensorboard_lists_the_logger_run_then_train_then_val(tmp_path: Path) -> None:
    """TensorBoard colours runs in the order of their first event (``core_plugin._serve_runs``
    sorts by start time): train must come right after the logger's own run, then val."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from tensorboard import context
        from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    writer = SummaryWriter(log_dir=str(tmp_path / "run" / "version_0"))
    writer.add_scalar("memwatch/x/mre/train", 1.0, 0)
    write_split_scalars(writer, {"memwatch/x/mre/val": 2.0, "memwatch/x/mre/train": 1.0}, 0)
    writer.close()
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
    runs = provider.list_runs(context.RequestContext(), experiment_id="")
    by_start = [run.run_name for run in sorted(runs, key=lambda r: (r.start_time, r.run_name))]
    assert by_start == ["run/version_0", "run/version_0/train", "run/version_0/val"]


class RemoteWriter:
    def get_logdir(self) -> str:
        return "s3://bucket/lightning_logs/version_0"


def test_a_remote_log_directory_gets_no_split_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    writer = RemoteWriter()
    assert split_run_dirs(writer) is None
    write_split_scalars(writer, {"memwatch/x/mre/train": 1.0}, 0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_without_a_tensorboard_logger_nothing_is_written(tmp_path: Path, logger: str) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from lightning_memwatch.viz import log_split_runs

    trainer = pl.Trainer(
        logger=CSVLogger(tmp_path) if logger == "csv" else False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    log_split_runs(trainer, {"memwatch/x/mre/train": 1.0})
    assert not list(tmp_path.rglob("*tfevents*"))
