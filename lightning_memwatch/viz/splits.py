"""Train and val as two TensorBoard runs, so that TensorBoard draws them in two colours.

TensorBoard colours a series by its run, never by its tag: in the *Custom Scalars* dashboard the
tags of one run share the run's colour and differ only by marker (``tf-custom-scalar-multi-line-
chart-card``: "Every data series within a run has a unique symbol"), and the *Scalars* and *Time
Series* dashboards draw one chart per tag. Logged only as ``<stem>/train`` and ``<stem>/val``
(the public keys, which stay as they are), train and val are two same-coloured charts.

So every scalar whose key ends in ``/train`` or ``/val`` is written a second time, as the tag
``<stem>``, into one of two runs of its own: the sub-folders ``train`` and ``val`` of the
logger's log directory (``lightning_logs/version_0/train``, ``.../val``), as Keras's TensorBoard
callback writes ``logs/train`` and ``logs/validation``. TensorBoard then draws
``memwatch/recovery/mre`` as one chart with two coloured lines named by their runs,
``version_0/train`` and ``version_0/val``, and the custom-scalars layout
(:mod:`~lightning_memwatch.viz.layout`) points its train-vs-val charts at that tag.

The events are appended to one file per run and process and the file is closed after every
write: no writer thread, nothing to close at the end of a fit, complete on disk after each
measurement. Only local log directories are written (a ``s3://`` or other remote one is left
alone: the public keys in the logger's own run are complete without it).
"""

from __future__ import annotations

import os
import socket
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from lightning_memwatch.viz.writer import global_step, tensorboard_writer

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.utils.tensorboard import SummaryWriter

#: The runs, in the order they are first written (TensorBoard colours runs in order of their
#: first event, so ``train`` takes the colour after the logger's own run and ``val`` the next).
SPLIT_RUNS = ("train", "val")

#: Per logger writer, the event file each split run appends to (one per run and process).
_files_by_writer: weakref.WeakKeyDictionary[object, dict[str, Path]] = weakref.WeakKeyDictionary()


def split_scalars(scalars: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{split: {stem: value}}`` of the keys ``<stem>/train`` and ``<stem>/val`` in ``scalars``.

    Example::

        >>> runs = split_scalars({
        ...     "memwatch/recovery/mre/train": 0.5, "memwatch/recovery/mre/val": 1,
        ...     "memwatch/recovery/mre_gap": 0.5, "memwatch/likelihood/train": -3})
        >>> runs["train"]
        {'memwatch/recovery/mre': 0.5, 'memwatch/likelihood': -3.0}
        >>> runs["val"]
        {'memwatch/recovery/mre': 1.0}
    """
    out: dict[str, dict[str, float]] = {}
    for key, value in scalars.items():
        stem, _, split = key.rpartition("/")
        if split in SPLIT_RUNS and stem:
            out.setdefault(split, {})[stem] = float(value)
    return {split: out[split] for split in SPLIT_RUNS if split in out}


def split_run_dirs(writer: SummaryWriter) -> dict[str, Path] | None:
    """The folders of the split runs below ``writer``'s log directory; ``None`` when that is not
    a local folder."""
    logdir = str(writer.get_logdir())
    if "://" in logdir:
        return None
    return {split: Path(logdir) / split for split in SPLIT_RUNS}


def _event_file(writer: SummaryWriter, split: str, folder: Path) -> tuple[Path, bool]:
    """The event file of ``split`` for this writer and process, and whether it is new."""
    files = _files_by_writer.setdefault(writer, {})
    if split in files:
        return files[split], False
    folder.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    files[split] = folder / f"{name}.memwatch"
    return files[split], True


def write_split_scalars(writer: SummaryWriter, scalars: Mapping[str, Any], step: int) -> None:
    """Append the ``/train`` and ``/val`` values of ``scalars`` to the split runs of ``writer``
    (:func:`split_scalars`), as tag ``<stem>`` at ``step``; nothing for a remote log directory.
    """
    folders = split_run_dirs(writer)
    per_split = split_scalars(scalars)
    if folders is None or not per_split:
        return
    for split, values in per_split.items():
        path, new = _event_file(writer, split, folders[split])
        events = []
        if new:
            events.append(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values.items()]
        )
        events.append(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        with path.open("ab") as handle:
            record_writer = RecordWriter(handle)
            for event in events:
                record_writer.write(event.SerializeToString())


def log_split_runs(trainer: pl.Trainer, scalars: Mapping[str, Any]) -> None:
    """:func:`write_split_scalars` into the trainer's first ``TensorBoardLogger`` at the step of
    the scalars Lightning logs now; nothing without one and on every rank but global zero."""
    writer = tensorboard_writer(trainer)
    if writer is not None:
        write_split_scalars(writer, scalars, global_step(trainer))
