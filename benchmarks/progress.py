"""What the measurement progress on the progress bar costs.

    python benchmarks/progress.py            # about 30 s on 2 CPU cores
    python benchmarks/progress.py --quick    # a few seconds

Part 1 times one :class:`~lightning_memwatch.callbacks.machinery.progress.MeasurementProgress`
call: with no bar (``enable_progress_bar=False``: returns at once), throttled (same family within
the interval), and shown (a real Lightning tqdm bar, writing to a buffer). Part 2 fits the demo VAE
with a ``RecoveryMonitor`` measuring every epoch, with Lightning's tqdm bar attached (its output
to ``/dev/null``) and without, interleaved, and prints the median ``memwatch/recovery/seconds``
of both side by side (the progress calls are inside that time).

Measured on a shared 2-core CPU machine (28 s): a call costs 0.12 us without a bar, 0.84 us
throttled and 81 us shown on a tqdm bar; a measurement shows about six lines (0.5 ms), and the
median measurement took 0.303 s without the bar and 0.287 s with it (ratio 0.95: noise).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

import lightning as L
from digits_vae import DigitsDataModule, DigitsVAE, quiet
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from lightning_memwatch import RecoveryMonitor
from lightning_memwatch.callbacks.machinery.progress import MeasurementProgress, _TqdmPostfix


def per_call(progress: MeasurementProgress, calls: int, family_of) -> float:
    start = time.perf_counter()
    for i in range(calls):
        progress(family_of(i), i, calls)
    return (time.perf_counter() - start) / calls


def part1(calls: int) -> None:
    bar = Tqdm(total=10, file=io.StringIO(), dynamic_ncols=False, ncols=120)
    none = MeasurementProgress(None)
    throttled = MeasurementProgress(None, interval=3600.0)
    throttled.display = _TqdmPostfix(bar)
    shown = MeasurementProgress(None, interval=0.0)
    shown.display = _TqdmPostfix(bar)
    rows = (
        ("no progress bar", per_call(none, calls, lambda i: "recovery")),
        ("throttled (same family)", per_call(throttled, calls, lambda i: "recovery")),
        ("shown on a tqdm bar", per_call(shown, calls, lambda i: "recovery")),
    )
    print(f"Part 1: one progress call ({calls} calls each)")
    for name, seconds in rows:
        print(f"  {name:<26} {seconds * 1e6:8.2f} us")


class Seconds(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get("memwatch/recovery/seconds")
        if value is not None:
            self.values.append(float(value))


def fit(with_bar: bool, epochs: int) -> list[float]:
    L.seed_everything(0, verbose=False)
    seconds = Seconds()
    monitor = RecoveryMonitor(
        encoder="encode", probe_size=128, steps=10, restarts=1, max_overhead=math.inf
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        enable_progress_bar=with_bar,
        callbacks=[monitor, seconds, *([TQDMProgressBar()] if with_bar else [])],
    )
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        trainer.fit(DigitsVAE(), datamodule=DigitsDataModule(n_train=256, batch_size=64))
    return seconds.values


def part2(repeats: int, epochs: int) -> None:
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for with_bar in (False, True):
            times[with_bar] += fit(with_bar, epochs)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"Part 2: RecoveryMonitor measurement (probe 128: 4 chunks of 64), "
        f"{len(times[True])} measurements each, interleaved"
    )
    print(f"  median seconds without bar {off:.4f}, with tqdm bar {on:.4f}, ratio {on / off:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    part1(2_000 if args.quick else 20_000)
    with quiet(1):
        part2(1 if args.quick else 3, 3 if args.quick else 6)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
