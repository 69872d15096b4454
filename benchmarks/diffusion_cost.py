"""What DiffusionMonitor's families cost against one training epoch of the DDPM example.

    python benchmarks/diffusion_cost.py            # 3 repeats
    python benchmarks/diffusion_cost.py --quick    # 1 repeat, smoke run

The model, data and training step are ``examples/ddpm_memorization.py``'s run B: a diffusers
``UNet2DModel`` (16 and 32 channels, 160k parameters) on 1,400 digits, 22 steps of batch 64 an
epoch. Each repeat fits it for 2 epochs once per family, with one ``DiffusionMonitor`` measuring
that family at every epoch on its whole probe (``max_overhead=inf``), at the monitor's defaults:

- ``loss``: probe 64 + 64, the default grid of 4 timesteps (512 denoiser inputs, forward only);
- ``samples``: 256 samples of the 10-step DDIM, against a reference of 1,024 training digits
  (C_T, copy fraction, near-copy share), the held-out probe of 64;
- ``spectrum``: probe 64 + 64, the whole 64 x 64 Jacobian of the x0-estimate at one timestep
  (64 forward-mode products a point).

Side by side in the same fit: the seconds of the second epoch's training steps (from its first
batch's start to its last batch's end, Lightning's loop included) and the family's logged
``memwatch/diffusion/<family>/seconds`` of the same epoch (the warm measurement, metric and
rolling table included). Printed: the medians over the repeats, their ratio, and how many epochs
apart the 5 % default budget can afford a whole-probe measurement (ratio / 0.05; the budget
measures a slice of the probe, at least 16 samples a split, in between).

``--threads 1`` (default) as the example: the model is tiny.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightning_memwatch import DiffusionMonitor

FAMILIES = ("loss", "samples", "spectrum")


class EpochClock(Callback):
    """Seconds from each epoch's first training batch start to its last batch end."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            self.seconds.append(time.perf_counter() - self._start)


class FamilySeconds(Callback):
    """The family's logged seconds at the end of every epoch (after the monitor measured)."""

    def __init__(self, family: str) -> None:
        self.key = f"memwatch/diffusion/{family}/seconds"
        self.seconds: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(float(trainer.callback_metrics[self.key]))


def one_fit(family: str, seed: int) -> tuple[float, float]:
    """(epoch seconds, family seconds) of the second epoch of a fit of run B."""
    import ddpm_memorization as example

    L.seed_everything(seed, verbose=False)
    train, held_out = example.loaders("B", seed)
    monitor = DiffusionMonitor(
        families=(family,), max_overhead=math.inf, data_range=(0, 1), seed=seed
    )
    clock, seconds = EpochClock(), FamilySeconds(family)
    trainer = example.cpu_trainer(2, [monitor, clock, seconds])
    trainer.fit(example.DigitsDDPM(), train, held_out)
    return clock.seconds[1], seconds.seconds[1]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    found: dict[str, list[tuple[float, float]]] = {f: [] for f in FAMILIES}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*val_dataloader.*validation_step.*|.*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        import logging

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        for repeat in range(repeats):
            order = FAMILIES if repeat % 2 == 0 else FAMILIES[::-1]  # alternate the order
            for family in order:
                found[family].append(one_fit(family, seed=repeat))
    results = {}
    print(
        f"\nDiffusionMonitor families against one training epoch of the DDPM example's run B "
        f"(1,400 digits, 22 steps of batch 64), {repeats} repeat(s), torch threads "
        f"{args.threads}, {time.perf_counter() - start:.0f} s in all:\n"
    )
    print("| family (defaults) | epoch s | family s | ratio | epochs apart at 5 % |")
    print("|---|---:|---:|---:|---:|")
    for family, pairs in found.items():
        epoch = statistics.median(p[0] for p in pairs)
        cost = statistics.median(p[1] for p in pairs)
        ratios = [p[1] / p[0] for p in pairs]
        ratio = statistics.median(ratios)
        results[family] = {"epoch_seconds": epoch, "family_seconds": cost, "ratio": ratio}
        spread = f" ({min(ratios):.3f}-{max(ratios):.3f})" if len(ratios) > 1 else ""
        print(f"| {family} | {epoch:.2f} | {cost:.3f} | {ratio:.3f}{spread} | {ratio / 0.05:.1f} |")
    print("\nTarget (issue 23): the loss family at probe 64 and its default grid <= 0.10 epoch.")
    return results


if __name__ == "__main__":
    main()
