"""Worker of ``benchmarks/overhead.py --part 4``: the cost of measuring a whole 64 + 64 probe.

    PYTHONPATH=<a checkout's root> python benchmarks/probe_cost.py --model vae --epochs 11 \
        --json out.json

Runs in its own process so that ``lightning_memwatch`` is imported from ``PYTHONPATH``: the
parent points it at this checkout or at an older commit's package (``git archive``), and each
answer names the package it imported. One ``trainer.fit`` of ``--epochs`` epochs with a
``TensorBoardLogger`` (artifacts are written) and ``GeometryMonitor(encoder="encode")`` and
``RecoveryMonitor(encoder="encode")`` at their defaults except ``max_overhead=float("inf")``, so
that every epoch measures every sample of the probe (``--probe-size``, default 64 per split);
the model trains between two measurements, as in a real fit. ``--slice n`` (the new code only)
fixes what the budget would choose: each measurement covers ``n`` rows of the rolling probe.

Written as JSON: per epoch, the wall time of each monitor's epoch-end hooks (the whole
measurement: families, artifacts, logging), every logged ``memwatch/`` scalar (the families'
``seconds`` among them) and ``val_loss``, and the per-sample values of every descriptor (probe
order) behind the logged statistics.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conv_models import ConvVAE, UpsampledDigitsDataModule
from digits_vae import DigitsDataModule, DigitsVAE, cpu_trainer, quiet

import lightning_memwatch
from lightning_memwatch import GeometryMonitor, RecoveryMonitor

HOOKS = ("on_validation_epoch_end", "on_train_epoch_end")


def build(model: str, seed: int) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The demo VAE (latent 8) or the conv VAE (latent 100), on 1,400 digits, batch 64."""
    if model == "vae":
        return DigitsVAE(latent_dim=8), DigitsDataModule(1400, 256, 64, seed)
    return ConvVAE(latent_dim=100), UpsampledDigitsDataModule(1400, 256, 64, seed)


def wall_seconds(run: Callable[[], None]) -> float:
    """Seconds ``run()`` takes by ``time.perf_counter``."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def time_hooks(
    callback: Callback,
    seconds: dict[int, float],
    timer: Callable[[Callable[[], None]], float] = wall_seconds,
) -> None:
    """Add the time of ``callback``'s epoch-end hooks to ``seconds[epoch]``, as ``timer`` takes
    it (``timer(run)`` calls ``run()`` and returns its seconds; ``benchmarks/gpu.py`` passes
    one that synchronizes CUDA and records peak memory)."""
    for name in HOOKS:
        original = getattr(callback, name)

        def wrapper(trainer: L.Trainer, pl_module: L.LightningModule, _f: Any = original) -> None:
            spent = timer(lambda: _f(trainer, pl_module))
            seconds[trainer.current_epoch] += spent

        setattr(callback, name, wrapper)


def keep_samples(family: str, metric: Any, samples: dict[str, Any], clock: list[int]) -> None:
    """Before ``metric.scalars()`` (the monitor's statistics of one measurement), keep its
    per-sample values: ``samples["<family>/<descriptor>"][split][epoch]``."""
    original = metric.scalars

    def wrapper() -> Any:
        for name in metric.descriptors:
            for split in ("train", "val"):
                values = metric.samples(name, split).double().cpu().tolist()
                samples[f"{family}/{name}"][split][str(clock[0])] = values
        return original()

    metric.scalars = wrapper


class Recorder(Callback):
    """Every ``memwatch/`` scalar and ``val_loss`` of each epoch (after the monitors)."""

    def __init__(self, clock: list[int]) -> None:
        self.clock = clock
        self.scalars: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock[0] = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.scalars.append(
            {
                key: float(value)
                for key, value in trainer.callback_metrics.items()
                if key.startswith("memwatch/") or key == "val_loss"
            }
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vae", "conv"), required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--probe-size", type=int, default=64, help="samples per split")
    parser.add_argument(
        "--slice",
        type=int,
        default=0,
        help="samples per split of each measurement (0: the whole probe); the new code only",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)

    clock = [0]
    samples: dict[str, Any] = defaultdict(lambda: {"train": {}, "val": {}})
    common = {"probe_size": args.probe_size, "max_overhead": math.inf, "seed": args.seed}
    geometry = GeometryMonitor(encoder="encode", **common)
    recovery = RecoveryMonitor(encoder="encode", **common)
    hook_seconds = {name: defaultdict(float) for name in ("geometry", "recovery")}
    if args.slice:  # the budget's choice, fixed: a measurement covers `slice` rows
        for monitor in (geometry, recovery):
            monitor.budget.next_probe_size = lambda: args.slice
    time_hooks(geometry, hook_seconds["geometry"])
    time_hooks(recovery, hook_seconds["recovery"])
    keep_samples("spectrum", geometry.spectrum_metric, samples, clock)
    keep_samples("density", geometry.density_metric, samples, clock)
    keep_samples("recovery", recovery.metric, samples, clock)
    recorder = Recorder(clock)
    with tempfile.TemporaryDirectory() as tmp, quiet(args.threads):
        L.seed_everything(args.seed, verbose=False)
        model, datamodule = build(args.model, args.seed)
        logger = TensorBoardLogger(tmp, name=args.model, default_hp_metric=False)
        trainer = cpu_trainer(args.epochs, logger, [geometry, recovery, recorder])
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        fit_seconds = time.perf_counter() - start
    out = {
        "package": lightning_memwatch.__file__,
        "fit_seconds": fit_seconds,
        "hook_seconds": {
            name: [seconds[e] for e in range(args.epochs)] for name, seconds in hook_seconds.items()
        },
        "scalars": recorder.scalars,
        "samples": dict(samples),
    }
    args.json.write_text(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
