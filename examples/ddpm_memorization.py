"""Catch a DDPM that starts copying its training digits: a diffusers UNet on 32 digits (A) and on
1,400 (B), with DiffusionMonitor attached and an independent near-copy count as ground truth.

    python examples/ddpm_memorization.py           # a few minutes on 2 idle CPU cores
    python examples/ddpm_memorization.py --fast    # a seconds-long smoke run (too short to read)

The same small diffusers ``UNet2DModel`` (two resolutions, 16 and 32 channels, no attention:
160k parameters) and ``DDPMScheduler`` (1,000 steps, linear betas, epsilon prediction, the
diffusers defaults) learn the 8 x 8 digits of ``sklearn.datasets.load_digits`` (scaled to [0, 1]
by the dataset, to [-1, 1] by ``training_step``; nothing is downloaded):

- run A on 32 training digits, drawn with replacement so that an epoch has as many steps as B's;
- run B on 1,400 training digits;

both with the same 397 held-out digits (the rest of the 1,797) as the validation data the
monitors draw their held-out probe from. Each epoch is 22 steps of batch 64; Adam at lr 2e-3.

Attached callbacks:

- ``DiffusionMonitor(families=("loss",))``: the per-sample denoising loss at t = 25, 50 and 100 of
  1,000 (the default grid), train against held-out probe (32 + 32 digits; run A has only
  32), at every epoch;
- ``DiffusionMonitor(families=("spectrum", "samples"), every_n_epochs=truth_every)``: the
  x0-estimate's spectrum at t = 20 and 256 samples of the built-in 10-step DDIM, at the epochs
  of the ground truth;
- the provisional rule, ``MemorizationEarlyStopping("memwatch/diffusion/loss/effect_upper",
  threshold=-0.5, mode="below", report_only=True)``: it fires once, with 95 % confidence, a
  training digit is denoised better than a held-out one in more than 75 % of pairs; report only,
  so that both runs go on and the near-copy share can be read after it fired;
- :class:`NearCopyTruth`: the ground truth, computed here with no memwatch code: every
  ``truth_every`` epochs, ``truth_samples`` samples of diffusers' own ``DDIMScheduler``
  (eta 0, "trailing" spacing, ``truth_steps`` steps, fixed starting noise, an RNG of its own),
  and the share of them whose nearest training digit is closer than a third of the second
  nearest (d1 / d2 < 1/3; Yoon et al. 2023; Gu et al. 2023, arXiv:2310.02664), in numpy.

Both monitors run with ``max_overhead=float("inf")``: all monitors of a ``Trainer`` share one
cost budget (the smallest ``max_overhead`` among them), so a 5 % budget would also thin out the
spectrum and samples measurements, which cost about 3 and 0.5 training epochs each on the
whole probe (``benchmarks/diffusion_cost.py``); at its default the loss family alone would be
measured on a slice of the probe every epoch or two (0.07 epoch per whole-probe measurement).

It prints, per run, the timeline (step, ground truth, the monitors' keys, where the rule fired)
and a table of the last measurement per family (train / val / gap / effect and its bounds).
TensorBoard logs go to ``--out`` (default ``outputs/ddpm_memorization/``, gitignored), one
directory per run. :func:`train_run` trains one run at a seed and returns what a benchmark needs
(the logged values per measurement and the ground truth per step).
"""

import argparse
import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from lightning_memwatch import DiffusionMonitor, MemorizationEarlyStopping

#: Training digits of each run.
TRAIN_SIZES = {"A": 32, "B": 1400}
#: The provisional diffusion rule (report only in the example).
RULE = {"monitor": "memwatch/diffusion/loss/effect_upper", "threshold": -0.5, "mode": "below"}
STEPS_PER_EPOCH, BATCH = 22, 64


@dataclass
class Settings:
    """What a run of the example does (``--fast`` shrinks it to a smoke run)."""

    epochs: int = 60
    truth_every: int = 5
    truth_samples: int = 256
    truth_steps: int = 20
    probe_size: int = 32
    num_generated: int = 256
    channels: tuple[int, ...] = (16, 32)
    lr: float = 2e-3

    @classmethod
    def fast(cls) -> "Settings":
        return cls(
            epochs=2,
            truth_every=1,
            truth_samples=32,
            truth_steps=4,
            probe_size=16,
            num_generated=32,
            channels=(8, 16),
        )


@dataclass
class RunResult:
    """One run: what each measurement logged, the ground truth, where the rule fired."""

    run: str
    seed: int
    n_train: int
    #: per epoch with a fresh loss measurement: ``{"step": ..., "epoch": ..., key: value}``
    logged: list[dict[str, float]] = field(default_factory=list)
    #: ``(step, near-copy share)`` of the ground truth
    truth: list[tuple[int, float]] = field(default_factory=list)
    fired_step: int | None = None
    seconds: float = 0.0
    log_dir: str | None = None


# ------------------------------------------------------------------------ data and model
def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,400-digit training pool and the 397 held-out digits, ``(N, 1, 8, 8)`` in [0, 1]
    (a fixed permutation: the held-out digits are the same for every run and seed)."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0).unsqueeze(1)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:1400]], images[order[1400:]]


def loaders(run: str, seed: int) -> tuple[DataLoader, DataLoader]:
    """Run ``run``'s training loader (A: 32 digits chosen by ``seed``, drawn with replacement,
    22 batches of 64 an epoch; B: the 1,400, shuffled) and the held-out loader."""
    pool, held_out = digits_split()
    if run == "A":
        chosen = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:32]
        data = TensorDataset(pool[chosen])
        draws = RandomSampler(data, replacement=True, num_samples=STEPS_PER_EPOCH * BATCH)
        train = DataLoader(data, batch_size=BATCH, sampler=draws)
    else:
        train = DataLoader(TensorDataset(pool), batch_size=BATCH, shuffle=True)
    return train, DataLoader(TensorDataset(held_out), batch_size=256)


class DigitsDDPM(L.LightningModule):
    """A diffusers ``UNet2DModel`` (``unet``) and ``DDPMScheduler`` (``noise_scheduler``) trained
    with the epsilon loss of Ho et al. 2020 (eq. 14) on digits mapped from [0, 1] to [-1, 1]."""

    def __init__(self, channels: Sequence[int] = (16, 32), lr: float = 2e-3) -> None:
        super().__init__()
        from diffusers import DDPMScheduler, UNet2DModel

        self.unet = UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=tuple(channels),
            down_block_types=("DownBlock2D",) * len(channels),
            up_block_types=("UpBlock2D",) * len(channels),
            norm_num_groups=8,
            add_attention=False,  # smaller and faster on 2 CPU cores (attention is measured too)
        )
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0 = batch[0] * 2 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (len(x0),), device=self.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        loss = (self.unet(x_t, t).sample - noise).square().mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# ------------------------------------------------------------------------- ground truth
def near_copy_share(samples: np.ndarray, train: np.ndarray) -> float:
    """The share of ``samples`` whose nearest training sample is closer than a third of the
    second nearest (Euclidean, flattened, float64 numpy)."""
    s, t = samples.reshape(len(samples), -1), train.reshape(len(train), -1)
    d = np.sqrt(np.maximum((s**2).sum(1)[:, None] - 2 * s @ t.T + (t**2).sum(1)[None], 0))
    two = np.sort(d, axis=1)[:, :2]
    return float((two[:, 0] < two[:, 1] / 3).mean())


def diffusers_ddim_samples(module: DigitsDDPM, count: int, steps: int, seed: int) -> np.ndarray:
    """``count`` samples of diffusers' ``DDIMScheduler`` (eta 0, trailing spacing) from noise of
    a generator of their own, in [-1, 1]; eval mode, global RNG untouched, mode restored."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(
        module.noise_scheduler.config, timestep_spacing="trailing"
    )
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(count, 1, 8, 8, generator=generator).to(module.device)
    training = module.training
    module.eval()
    try:
        with torch.no_grad(), isolate_rng():
            for t in scheduler.timesteps:
                x = scheduler.step(module.unet(x, t).sample, t, x, eta=0.0).prev_sample
    finally:
        module.train(training)
    return x.cpu().double().numpy()


class NearCopyTruth(Callback):
    """Every ``every`` epochs, the near-copy share of ``count`` DDIM samples against the
    training digits (all of them), at ``(global step, share)``; no memwatch code."""

    def __init__(self, train_digits: torch.Tensor, every: int, count: int, steps: int, seed: int):
        self.train = (train_digits * 2 - 1).double().numpy()
        self.every, self.count, self.steps, self.seed = every, count, steps, seed
        self.shares: list[tuple[int, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every:
            return
        samples = diffusers_ddim_samples(pl_module, self.count, self.steps, self.seed)
        share = near_copy_share(samples, self.train)
        self.shares.append((trainer.global_step, share))
        pl_module.log("truth/near_copy_share", share, on_step=False, on_epoch=True)


class Recorder(Callback):
    """After the monitors, at the end of every epoch, the memwatch values measured in it (a
    monitor that did not measure an epoch has its keys out of ``callback_metrics``)."""

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        fresh = {k: float(v) for k, v in metrics.items() if k.startswith("memwatch/")}
        fresh = {k: v for k, v in fresh.items() if not k.endswith("/probe_size") or v > 0}
        self.logged.append({"step": trainer.global_step, "epoch": trainer.current_epoch, **fresh})


def monitors(settings: Settings, seed: int) -> list[Callback]:
    """The loss monitor, the spectrum + samples monitor, and the rule (report only)."""
    common = {
        "probe_size": settings.probe_size,
        "data_range": (0, 1),
        "seed": seed,
        "max_overhead": math.inf,  # see the module docstring
    }
    return [
        DiffusionMonitor(families=("loss",), **common),
        DiffusionMonitor(
            families=("spectrum", "samples"),
            every_n_epochs=settings.truth_every,
            num_generated=settings.num_generated,
            **common,
        ),
        MemorizationEarlyStopping(**RULE, report_only=True),
    ]


def cpu_trainer(epochs: int, callbacks: list[Callback], logger: Any = False) -> L.Trainer:
    """The example's Trainer: CPU, no checkpoints, progress bar or sanity check."""
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=STEPS_PER_EPOCH,
        callbacks=callbacks,
    )


@contextlib.contextmanager
def quiet(threads: int = 1) -> Iterator[None]:
    """Lightning's start-up chatter off, ``threads`` intra-op threads (the model is tiny)."""
    import logging

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    level = logging.getLogger("lightning.pytorch").level
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*val_dataloader.*validation_step.*")
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            yield
    finally:
        torch.set_num_threads(saved)
        logging.getLogger("lightning.pytorch").setLevel(level)


def train_run(
    run: str,
    seed: int = 0,
    settings: Settings | None = None,
    *,
    out: Path | None = None,
    callbacks: Callable[[Settings, int], list[Callback]] = monitors,
) -> RunResult:
    """Train run ``run`` (``"A"`` or ``"B"``) at ``seed`` (model, noise, A's 32 digits, probes)
    with ``callbacks(settings, seed)`` (default: :func:`monitors`): the values logged at every
    epoch, the ground truth every ``truth_every`` epochs, the step at the end of the epoch where
    the first ``MemorizationEarlyStopping`` among them fired."""
    settings = settings or Settings()
    L.seed_everything(seed, verbose=False)
    train, held_out = loaders(run, seed)
    attached = callbacks(settings, seed)
    stopper = next((c for c in attached if isinstance(c, MemorizationEarlyStopping)), None)
    truth = NearCopyTruth(
        train.dataset.tensors[0],
        settings.truth_every,
        settings.truth_samples,
        settings.truth_steps,
        seed,
    )
    recorder = Recorder()
    logger = (
        False
        if out is None
        else TensorBoardLogger(str(out), name=f"{run}_seed{seed}", default_hp_metric=False)
    )
    trainer = cpu_trainer(settings.epochs, [*attached, truth, recorder], logger)
    start = time.perf_counter()
    trainer.fit(DigitsDDPM(settings.channels, settings.lr), train, held_out)
    fired = (
        None
        if stopper is None or stopper.fired_epoch is None
        else (stopper.fired_epoch + 1) * STEPS_PER_EPOCH
    )
    return RunResult(
        run=run,
        seed=seed,
        n_train=len(train.dataset),
        logged=recorder.logged,
        truth=truth.shares,
        fired_step=fired,
        seconds=time.perf_counter() - start,
        log_dir=None if out is None else logger.log_dir,
    )


# ----------------------------------------------------------------------------- printing
TIMELINE = (
    ("loss rel. gap", "memwatch/diffusion/loss/relative_gap"),
    ("loss effect up", "memwatch/diffusion/loss/effect_upper"),
    ("psi effect up", "memwatch/diffusion/spectrum/log_volume/effect_upper"),
    ("samples near", "memwatch/diffusion/samples/near_copy_share"),
    ("samples C_T", "memwatch/diffusion/samples/ct"),
)
SUMMARY = (
    ("loss", "memwatch/diffusion/loss"),
    ("loss at t=25", "memwatch/diffusion/loss/t0.025"),
    ("loss at t=100", "memwatch/diffusion/loss/t0.1"),
    ("psi (log volume)", "memwatch/diffusion/spectrum/log_volume"),
    ("nu (local rank)", "memwatch/diffusion/spectrum/local_rank"),
)


def _cell(value: float | None, digits: int = 3) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def latest(result: RunResult, step: int) -> dict[str, float]:
    """Every key's latest finite value logged at or before ``step``."""
    values: dict[str, float] = {}
    for row in result.logged:
        if row["step"] <= step:
            values.update({k: v for k, v in row.items() if math.isfinite(v)})
    return values


def timeline(result: RunResult) -> str:
    """At every ground-truth step, the monitors' latest values beside it (markdown); ``rule``
    marks the row by whose step the rule had fired."""
    head = "| step | truth near-copy | " + " | ".join(label for label, _ in TIMELINE) + " | rule |"
    lines = [head, "|---:" * (len(TIMELINE) + 3) + "|"]
    previous = -1
    for step, share in result.truth:
        fired = result.fired_step is not None and previous < result.fired_step <= step
        values = latest(result, step)
        cells = [_cell(values.get(key)) for _, key in TIMELINE]
        lines.append(
            f"| {step} | {_cell(share)} | " + " | ".join(cells) + f" | {'fired' if fired else ''} |"
        )
        previous = step
    return "\n".join(lines)


def summary(results: dict[str, RunResult]) -> str:
    """Last value per family of every run: train / val / gap / effect [lower, upper]."""
    head = "| family / key |" + "".join(
        f" {r} train | {r} val | {r} gap | {r} effect [bounds] |" for r in results
    )
    lines = [head, "|---|" + "---:|" * (4 * len(results))]
    for label, base in SUMMARY:
        cells = []
        for result in results.values():
            last = latest(result, math.inf)
            effect = _cell(last.get(f"{base}/effect"), 2)
            bounds = (last.get(f"{base}/effect_lower"), last.get(f"{base}/effect_upper"))
            if None not in bounds:
                effect += f" [{bounds[0]:.2f}, {bounds[1]:.2f}]"
            values = (last.get(f"{base}/{stat}") for stat in ("train", "val", "gap"))
            cells += [*(_cell(v) for v in values), effect]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def first_step_over(result: RunResult, share: float) -> int | None:
    """The first step at which the ground-truth near-copy share exceeds ``share``."""
    return next((step for step, value in result.truth if value > share), None)


def main(argv: list[str] | None = None) -> dict[str, RunResult]:
    """Train runs A and B, print the timelines and the table; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--out", type=Path, default=Path("outputs/ddpm_memorization"))
    parser.add_argument("--seed", type=int, default=0, help="model, noise, A's digits, probes")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of 22 steps per run")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    settings = Settings.fast() if args.fast else Settings()
    if args.epochs is not None:
        settings.epochs = args.epochs
    with quiet(args.threads):
        results = {run: train_run(run, args.seed, settings, out=args.out) for run in TRAIN_SIZES}
    for run, result in results.items():
        print(
            f"\nRun {run}: {result.n_train} training digits, {settings.epochs} epochs of "
            f"{STEPS_PER_EPOCH} steps, seed {args.seed} ({result.seconds:.0f} s)"
        )
        print(timeline(result))
        over = first_step_over(result, 0.10)
        rule = "did not fire" if result.fired_step is None else f"fired at step {result.fired_step}"
        truth = "never passed 10 %" if over is None else f"passed 10 % at step {over}"
        print(f"rule ({RULE['monitor']} < {RULE['threshold']}): {rule}; near-copy share {truth}")
    print(
        f"\nLast measurement of each family (probe: {settings.probe_size} train and "
        f"{settings.probe_size} held-out digits; gap = train - val):"
    )
    print(summary(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_seed{args.seed}.json").write_text(
        json.dumps({run: asdict(r) for run, r in results.items()}, indent=1)
    )
    print(f"\ntensorboard --logdir {args.out}")
    if args.fast:
        print("--fast: a smoke run, too short for run A to memorize; drop it to read the table.")
    return results


if __name__ == "__main__":
    main()
