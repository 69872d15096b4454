"""What the memwatch monitors cost a fit at their defaults, resolved to a few percent.

    python benchmarks/overhead.py               # parts 1 and 2 (about 10 min on 2 quiet cores)
    python benchmarks/overhead.py --quick       # a smoke run of every part (fewer epochs)
    python benchmarks/overhead.py --part 1      # one part: 1, 2, 3 or all (3: the old probe cost)

1. **Fit time with / without README's snippet** (``GeometryMonitor``, ``RecoveryMonitor``,
   ``EffectAgreement``, ``MemorizationEarlyStopping("memwatch/agreement/bound", 0.3, "above")``
   exactly as README gives them: ``decoder="auto", encoder="auto"``, every other argument at
   its default, the probe of 64 cut to what the data allows), a ``TensorBoardLogger`` in
   every fit, on

   - a conv autoencoder (``benchmarks/conv_models.py``: ``ConvAutoencoder``, ``self.encoder`` /
     ``self.decoder``, 16 x 16 digits, 32 training and 64 validation digits, batch 32) over 300
     epochs (about 6 s on 2 quiet cores). Target: ratio <= 1.15;
   - the demo VAE (``examples/digits_vae.py``: latent 8, 1,400 digits, batch 64, 256 validation
     digits) over 300 epochs. Target: ratio <= 1.05.

   Every fit runs in a fresh Python process (a newcomer's run: the process's first
   forward-mode call, about 0.3 s, is paid in it), ``--repeats`` fits per configuration (3 by
   default), with and without the monitors alternating, every fit from the same seed; the fit
   time is ``trainer.fit``'s wall time (its CPU time too: on a machine shared with other jobs
   the process's CPU time is the steadier reading). Printed per model: the medians and their
   ratio, each fit's time, and where the monitors' seconds went by their own books (the
   train-start work: probe, checks and the decoder's timing; the measurements, artifacts and
   logging included; their hooks at unmeasured epochs and Lightning's writing of their keys)
   against the fit-time difference: what the books miss is ``median(with) - median(without) -
   median(books)``. Also printed: the load average before and
   after, the epochs each monitor measured, and the summary the monitors printed at the end
   of the last fit with them.
2. **The demo's runs A and B at the defaults** (``examples/vae_memorization.py``'s ``runs()``,
   README's snippet, the budget on) with the recommended rule (report only): the summary each
   prints, and where the rule fired against A's best validation loss.
3. **Cost of measuring every sample of a 64 + 64 probe once** against commit ``47f86a5``
   (``benchmarks/probe_compare.py``).

``--threads 1`` (default): the models are tiny, so intra-op threads only add synchronisation.
The package measured is this checkout's (its root is put first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

import lightning as L
from conv_models import ConvAutoencoder, UpsampledDigitsDataModule
from digits_vae import DigitsDataModule, DigitsVAE, cpu_trainer, quiet
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

import lightning_memwatch
from lightning_memwatch import (
    EffectAgreement,
    GeometryMonitor,
    MemorizationEarlyStopping,
    RecoveryMonitor,
)
from lightning_memwatch.callbacks.machinery.clock import run_clock
from lightning_memwatch.callbacks.machinery.summary import fit_summary

#: The recommended rule (README's snippet).
RULE = {"monitor": "memwatch/agreement/bound", "threshold": 0.3, "mode": "above"}
#: model -> (module, datamodule(seed), epochs, quick epochs)
CASES: dict[str, tuple[Any, ...]] = {
    "conv autoencoder": (
        ConvAutoencoder,
        lambda seed: UpsampledDigitsDataModule(32, 64, 32, seed, 1, side=16),
        300,
        30,
    ),
    "demo VAE": (
        lambda: DigitsVAE(latent_dim=8),
        lambda seed: DigitsDataModule(1400, 256, 64, seed),
        300,
        10,
    ),
}
TARGETS = {"conv autoencoder": 1.15, "demo VAE": 1.05}


def snippet() -> list[Callback]:
    """README's snippet, as it is written there."""
    return [
        GeometryMonitor(decoder="auto", encoder="auto"),
        RecoveryMonitor(decoder="auto", encoder="auto"),
        EffectAgreement(),
        MemorizationEarlyStopping(**RULE),
    ]


class Seconds(Callback):
    """The logged ``memwatch/<family>/seconds`` of every measured epoch, summed."""

    def __init__(self) -> None:
        self.total = 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for callback in trainer.callbacks:
            if hasattr(callback, "budget") and callback.last_logged_epoch == trainer.current_epoch:
                for family in getattr(callback, "families", ()):
                    self.total += callback.last_scalars.get(f"memwatch/{family}/seconds", 0.0)


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def one_fit(case: str, config: str, seed: int, epochs: int, log_dir: str) -> dict[str, Any]:
    """One fit in this process: its wall time and, with the monitors, their books."""
    model, data, *_ = CASES[case]
    L.seed_everything(seed, verbose=False)
    callbacks = snippet() if config == "with" else []
    seconds = Seconds()
    logger = TensorBoardLogger(log_dir, name=config, default_hp_metric=False)
    trainer = cpu_trainer(epochs, logger, [*callbacks, seconds])
    captured = Captured()
    logging.getLogger("lightning.pytorch.callbacks.memwatch").addHandler(captured)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model(), datamodule=data(seed))
    out: dict[str, Any] = {
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
    }
    if callbacks:
        clock = run_clock(trainer)
        monitors = [cb for cb in callbacks if hasattr(cb, "budget")]
        out |= {
            "books": sum(clock.spent.values()),
            "start": sum(cb.budget.start_seconds for cb in monitors),
            "measurements": seconds.total,
            "run": clock.run_seconds,
            "measured": {type(cb).__name__: cb.measurements for cb in monitors},
            "summary": [m for m in captured.messages if m.startswith("memwatch summary")],
            "rule": fit_summary(trainer)["callbacks"][-1]["state"],
        }
    return out


def spawn(case: str, config: str, seed: int, epochs: int, threads: int) -> dict[str, Any]:
    """:func:`one_fit` in a fresh Python process."""
    command = [
        sys.executable,
        __file__,
        "--fit",
        case,
        config,
        "--seed",
        str(seed),
        "--epochs",
        str(epochs),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{case} {config} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1][len("RESULT ") :])


def load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def part_1(quick: bool, seed: int, repeats: int, threads: int) -> None:
    print("\n## 1. Fit time with / without README's snippet (fresh process per fit)\n")
    print(f"load average before (1 / 5 / 15 min): {load()}", flush=True)
    rows = []
    for case, (*_, epochs, quick_epochs) in CASES.items():
        epochs = quick_epochs if quick else epochs
        fits: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
        for repeat in range(repeats):
            for config in ("without", "with") if repeat % 2 == 0 else ("with", "without"):
                fits[config].append(spawn(case, config, seed, epochs, threads))
                print(f"  {case}, {config}: {fits[config][-1]['seconds']:.2f} s", flush=True)
        rows.append((case, epochs, fits))
    print(f"load average after: {load()}\n")
    print(
        "| model | epochs | without (s) | with (s) | ratio (target) | CPU-time ratio | books (s) "
        "| train start (s) | measurements (s) | logging, hooks, Lightning's writing (s) | "
        "missed by the books (s) | measured epochs (geometry / recovery) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for case, epochs, fits in rows:
        without = statistics.median(f["seconds"] for f in fits["without"])
        with_ = statistics.median(f["seconds"] for f in fits["with"])
        cpu = statistics.median(f["cpu"] for f in fits["with"]) / statistics.median(
            f["cpu"] for f in fits["without"]
        )
        books = statistics.median(f["books"] for f in fits["with"])
        start = statistics.median(f["start"] for f in fits["with"])
        measured = statistics.median(f["measurements"] for f in fits["with"])
        counts = "; ".join(" / ".join(str(n) for n in f["measured"].values()) for f in fits["with"])
        print(
            f"| {case} | {epochs} | {without:.2f} | {with_:.2f} | {with_ / without:.3f} "
            f"({TARGETS[case]}) | {cpu:.3f} | {books:.2f} | {start:.2f} | {measured:.2f} | "
            f"{books - start - measured:.2f} | {with_ - without - books:.2f} | {counts} |"
        )
    print()
    for case, _, fits in rows:
        each = ", ".join(f"{c} " + " / ".join(f"{f['seconds']:.2f}" for f in fits[c]) for c in fits)
        print(f"{case}, every fit (s): {each}; rule: {fits['with'][-1]['rule']}")
    for case, _, fits in rows:
        print(f"\nThe summary of the last {case} fit with the monitors:\n")
        print("\n".join(fits["with"][-1]["summary"]))


def part_2(quick: bool, seed: int) -> None:
    """The demo's runs A and B at the defaults with the recommended rule (report only)."""
    from vae_memorization import ValLossHistory, runs

    print("\n## 2. The demo's runs A and B at the defaults, the recommended rule\n", flush=True)
    captured = Captured()
    logging.getLogger("lightning.pytorch.callbacks.memwatch").addHandler(captured)
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs(quick):
            L.seed_everything(seed, verbose=False)
            data = DigitsDataModule(run.n_train, 256, run.batch_size, seed, run.passes)
            callbacks = snippet()
            callbacks[-1] = MemorizationEarlyStopping(**RULE, report_only=True)
            history = ValLossHistory()
            logger = TensorBoardLogger(tmp, name=run.name, default_hp_metric=False)
            trainer = cpu_trainer(run.epochs, logger, [*callbacks, history])
            start = time.perf_counter()
            trainer.fit(DigitsVAE(latent_dim=8), datamodule=data)
            print(
                f"run {run.name}: {run.epochs} epochs, {time.perf_counter() - start:.1f} s; "
                f"rule fired at {callbacks[-1].fired_epoch}; best val_loss at epoch "
                f"{history.best_epoch}"
            )
            print("\n".join(m for m in captured.messages if m.startswith("memwatch summary")))
            captured.messages.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run of every part")
    parser.add_argument("--part", choices=("1", "2", "3", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=3, help="fits per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit", nargs=2, metavar=("CASE", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be positive integers")
    warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
    if args.fit:  # a worker: one fit, its result as JSON on the last line
        with tempfile.TemporaryDirectory() as tmp, quiet(args.threads):
            result = one_fit(*args.fit, args.seed, args.epochs, tmp)
        print("RESULT " + json.dumps(result))
        return
    start = time.perf_counter()
    print(
        f"lightning_memwatch from {Path(lightning_memwatch.__file__).parent}; torch threads "
        f"{args.threads}; {'quick' if args.quick else 'full'} run"
    )
    if args.part in ("1", "all"):
        part_1(args.quick, args.seed, args.repeats, args.threads)
    if args.part in ("2", "all"):
        with quiet(args.threads):
            part_2(args.quick, args.seed)
    if args.part == "3":
        import probe_compare

        probe_compare.main(quick=args.quick, threads=args.threads, seed=args.seed)
    print(f"\nWhole benchmark: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
