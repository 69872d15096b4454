"""Training wall time of the demo VAE with and without the memwatch callbacks, default settings.

    python benchmarks/overhead.py                    # about 1-2 minutes on 2 CPU cores
    python benchmarks/overhead.py --repeats 1 --epochs 300   # long enough for the budget to settle
    python benchmarks/overhead.py --logger none      # no TensorBoardLogger: no figures

The model and data of ``examples/vae_memorization.py`` run B (:class:`digits_vae.DigitsVAE`,
latent 8, on 1,400 digits, batch 64, validated on 256) are trained ``--repeats`` times without
callbacks and ``--repeats`` times with ``GeometryMonitor(encoder="encode")``,
``RecoveryMonitor(encoder="encode")`` and ``MemorizationEarlyStopping()`` at their defaults
(``probe_size=64``, ``every_n_epochs=1``, ``max_overhead=0.05``; recovery ``steps=50,
restarts=2``; decay radii ``(0.5, 1.0)``), interleaved (the order alternates every repeat) so
that a change of machine load hits both alike. Every fit starts from the same seed.

Printed: the median ``trainer.fit`` wall time of each configuration and their ratio; the
callbacks' own ``memwatch/<family>/seconds`` (summed over the epochs of one fit, read back from
the TensorBoard event files) and ``probe_size`` per epoch; and the monitors' own budget view
(seconds spent / seconds of the run outside the monitor), which is what ``max_overhead`` bounds.

``--logger tensorboard`` (the default, as Lightning's own default logger is a
``TensorBoardLogger`` when tensorboard is installed) lets the monitors write their TensorBoard
artifacts (histograms, figures, image strips); ``--logger none`` runs without a logger, so only
the scalars are computed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from digits_vae import DigitsDataModule, DigitsVAE, cpu_trainer, quiet

from lightning_memwatch import (
    GeometryMonitor,
    MemorizationEarlyStopping,
    RecoveryMonitor,
)

FAMILIES = ("spectrum", "density", "recovery")


def memwatch_callbacks() -> list[Any]:
    """The three callbacks at their defaults (only the encoder is named: the VAE has one)."""
    return [
        GeometryMonitor(encoder="encode"),
        RecoveryMonitor(encoder="encode"),
        MemorizationEarlyStopping(),
    ]


def fit_once(with_callbacks: bool, epochs: int, log_dir: Path | None, seed: int) -> dict[str, Any]:
    """One ``trainer.fit``; its wall time and, with callbacks, the monitors' own bookkeeping."""
    L.seed_everything(seed, verbose=False)
    datamodule = DigitsDataModule(n_train=1400, n_val=256, batch_size=64, seed=seed)
    model = DigitsVAE(latent_dim=8)
    callbacks = memwatch_callbacks() if with_callbacks else []
    logger = (
        TensorBoardLogger(str(log_dir), name="with" if with_callbacks else "without")
        if log_dir is not None
        else False
    )
    trainer = cpu_trainer(epochs, logger, callbacks)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    out: dict[str, Any] = {"seconds": time.perf_counter() - start}
    # each monitor's own bookkeeping (callbacks/budget.py): seconds measuring / training seconds
    out["budget"] = {
        type(c).__name__: c.budget.spent_seconds / c.budget.train_seconds
        for c in callbacks
        if hasattr(c, "budget") and c.budget.train_seconds > 0
    }
    if logger:
        out["log_dir"] = logger.log_dir
    return out


def logged_seconds(log_dir: str) -> dict[str, tuple[float, list[int]]]:
    """Per family: the sum of logged ``memwatch/<family>/seconds`` and the logged probe sizes."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    out = {}
    for family in FAMILIES:
        key = f"memwatch/{family}/seconds"
        if key in tags:
            seconds = sum(e.value for e in accumulator.Scalars(key))
            sizes = [int(e.value) for e in accumulator.Scalars(f"memwatch/{family}/probe_size")]
            out[family] = (seconds, sizes)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fits per configuration")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per fit (22 steps each)")
    parser.add_argument("--logger", choices=("tensorboard", "none"), default="tensorboard")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp, quiet(args.threads):
        log_dir = Path(tmp) if args.logger == "tensorboard" else None
        for repeat in range(args.repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for with_callbacks in order:
                run = fit_once(with_callbacks, args.epochs, log_dir, args.seed)
                if "log_dir" in run and with_callbacks:
                    run["logged"] = logged_seconds(run["log_dir"])
                runs[with_callbacks].append(run)
                label = "with   " if with_callbacks else "without"
                print(f"repeat {repeat}: {label} callbacks {run['seconds']:7.2f} s", flush=True)

    without = statistics.median(r["seconds"] for r in runs[False])
    with_ = statistics.median(r["seconds"] for r in runs[True])
    budget = {
        name: statistics.median(r["budget"][name] for r in runs[True])
        for name in runs[True][0]["budget"]
    }
    print(
        f"\nDemo VAE on 1,400 digits, {args.epochs} epochs, {args.repeats} fits each, "
        f"logger: {args.logger}, torch threads: {args.threads}\n"
    )
    print("| configuration | median fit wall time (s) | all fits (s) |")
    print("|---|---:|---|")
    for label, key in (("without callbacks", False), ("with the 3 callbacks", True)):
        all_fits = ", ".join(f"{r['seconds']:.1f}" for r in runs[key])
        median = statistics.median(r["seconds"] for r in runs[key])
        print(f"| {label} | {median:.2f} | {all_fits} |")
    print(
        f"\nratio with / without: {with_ / without:.3f} "
        f"(overhead {100 * (with_ / without - 1):+.1f} % of the fit's wall time)\n"
        "each monitor's own budget view, seconds measuring / seconds of the run outside it "
        "(median; max_overhead is 5 % each): "
        + ", ".join(f"{name} {100 * value:.1f} %" for name, value in budget.items())
    )
    logged = [r["logged"] for r in runs[True] if "logged" in r]
    if logged:
        print("\nlogged memwatch/<family>/seconds, summed over one fit (median of fits):")
        for family in FAMILIES:
            totals = [entry[family][0] for entry in logged if family in entry]
            if totals:
                sizes = logged[0][family][1]
                print(
                    f"  {family:9s} {statistics.median(totals):6.2f} s; probe_size per epoch "
                    f"(first fit): {sizes}"
                )
        logged_total = statistics.median(
            sum(seconds for seconds, _ in entry.values()) for entry in logged
        )
        print(
            f"  extra wall time not in the logged seconds (median with - median without - "
            f"logged): {with_ - without - logged_total:.2f} s"
        )
    return {"without": without, "with": with_, "ratio": with_ / without, "budget": budget}


if __name__ == "__main__":
    main()
