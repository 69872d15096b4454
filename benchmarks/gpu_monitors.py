"""The monitors' part of ``benchmarks/gpu.py``: one whole measurement of each monitor against
one training epoch of the example models, on one device, with peak memory.

The models: the demo VAE (``examples/digits_vae.py``, latent 8, 1,400 digits, batch 64), the
DCGAN (``examples/dcgan_digits.py``, latent 100, 28 x 28, its ``monitors()``), and a DDPM (a
diffusers ``UNet2DModel`` + ``DDPMScheduler``, epsilon prediction, T = 200, on the digits
scaled to [-1, 1]) watched by ``lightning_memwatch.DiffusionMonitor`` where this checkout has
it. For each model two fits of ``epochs`` epochs from one seed: without monitors (each epoch,
its training steps and validation pass, timed), then with them at ``max_overhead=inf``
(every epoch measures the whole probe, a ``TensorBoardLogger`` attached so artifacts are
written), each monitor's epoch-end hooks timed (``probe_cost.time_hooks``). Times are taken
between ``torch.cuda.synchronize()`` calls on CUDA; peak memory is
``torch.cuda.max_memory_allocated`` above the allocation at the start of the epoch or hook,
on the CPU the resident-set high-water mark above the resident set at its start
(``benchmarks/jacobian.py``).
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import dcgan_digits
from digits_vae import DigitsDataModule, DigitsVAE
from generator_report import UpsampledDigits
from jacobian import peak_rss, reset_peak_rss, sync
from probe_cost import time_hooks

import lightning_memwatch
from lightning_memwatch import GeometryMonitor, LikelihoodMonitor, RecoveryMonitor


class Meter:
    """Seconds and peak memory (bytes above the start) of a stretch of work on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.records: list[tuple[float, int]] = []
        self.marks: list[int] = []  # where each training epoch's records begin

    def start(self) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = reset_peak_rss()
        self.started = time.perf_counter()

    def stop(self) -> tuple[float, int]:
        sync(self.device)
        seconds = time.perf_counter() - self.started
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            peak = peak_rss() - self.base
        self.records.append((seconds, peak))
        return seconds, peak

    def __call__(self, run: Callable[[], None]) -> float:
        """``probe_cost.time_hooks``' timer: run, keep (seconds, peak), return the seconds."""
        self.start()
        run()
        return self.stop()[0]


class EpochMarks(Callback):
    """Marks in each meter where a training epoch's records begin (listed before the
    monitors, so that its hook runs first)."""

    def __init__(self, meters: list[Meter]) -> None:
        self.meters = meters

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for meter in self.meters:
            meter.marks.append(len(meter.records))


class EpochMeter(Callback):
    """Each training epoch (its steps and its validation pass) through a :class:`Meter`."""

    def __init__(self, device: torch.device) -> None:
        self.meter = Meter(device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.meter.start()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.meter.stop()


class ScaledDigits(DigitsDataModule):
    """The demo's digits scaled from [0, 1] to [-1, 1] (the diffusers convention)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train_images = 2 * self.train_images - 1
        self.val_images = 2 * self.val_images - 1


class DigitsDDPM(L.LightningModule):
    """An epsilon-predicting DDPM (Ho et al. 2020, arXiv:2006.11239) on 8 x 8 digits in
    [-1, 1]: diffusers' ``UNet2DModel`` (two resolutions, ``width`` and ``2 width`` channels)
    and ``DDPMScheduler`` (``timesteps`` steps); loss ``|eps - unet(x_t, t)|^2`` at a uniform
    ``t``. Attributes ``unet`` and ``noise_scheduler``, as ``DiffusionMonitor`` is told."""

    def __init__(self, timesteps: int = 200, width: int = 32, lr: float = 1e-3) -> None:
        from diffusers import DDPMScheduler, UNet2DModel

        super().__init__()
        self.save_hyperparameters()
        self.unet = UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(width, 2 * width),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=timesteps)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0]
        noise = torch.randn_like(x)
        t = torch.randint(0, self.hparams.timesteps, (len(x),), device=x.device)
        x_t = self.noise_scheduler.add_noise(x, noise, t)
        loss = nn.functional.mse_loss(self.unet(x_t, t).sample, noise)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class Scale(NamedTuple):
    """Training digits, epochs per fit, probe size per split, the models' widths, and
    ``light``: the monitors with few recovery steps and the spectrum family alone, and no
    logger (no artifacts)."""

    n_train: int
    epochs: int
    probe: int
    dcgan_width: int
    ddpm_width: int
    light: bool


#: The examples' sizes (1,400 digits, DCGAN width 64) and the monitors as the examples set
#: them, three epochs: the first measurement and two more. ``QUICK``: a smoke run for the tests.
FULL = Scale(n_train=1400, epochs=3, probe=64, dcgan_width=64, ddpm_width=32, light=False)
QUICK = Scale(n_train=64, epochs=2, probe=4, dcgan_width=8, ddpm_width=8, light=True)


class Case(NamedTuple):
    """A model, its data and its monitors (``monitors(probe_size)``: ``{label: callback}``)."""

    name: str
    model: Callable[[], L.LightningModule]
    data: Callable[[int], L.LightningDataModule]
    monitors: Callable[[int], dict[str, Callback]]


def diffusion_case(scale: Scale) -> tuple[Case | None, str]:
    """The DDPM case (``None`` without ``diffusers``) and whether ``DiffusionMonitor`` is in it:
    without one in this checkout, the DDPM's epoch is still timed, with no monitor."""
    try:
        import diffusers  # noqa: F401
    except ImportError as error:
        return None, f"absent: diffusers does not import ({error}), no DDPM"
    monitor = getattr(lightning_memwatch, "DiffusionMonitor", None)
    status = "present" if monitor else "absent: no lightning_memwatch.DiffusionMonitor here"

    def monitors(probe: int) -> dict[str, Callback]:
        if monitor is None:
            return {}
        common = {"probe_size": probe, "max_overhead": math.inf}
        return {"DiffusionMonitor": monitor(denoiser="unet", schedule="noise_scheduler", **common)}

    def data(seed: int) -> ScaledDigits:
        return ScaledDigits(n_train=scale.n_train, n_val=256, batch_size=64, seed=seed)

    def model() -> DigitsDDPM:
        return DigitsDDPM(width=scale.ddpm_width)

    return Case("DDPM (UNet2DModel, T=200)", model, data, monitors), status


#: What ``Scale.light`` changes in the monitors.
LIGHT_GEOMETRY = {"families": ("spectrum",)}
LIGHT_RECOVERY = {"steps": 3, "restarts": 1}


def vae_monitors(probe: int, light: bool) -> dict[str, Callback]:
    """The demo VAE's monitors at their defaults (``light``: lighter)."""
    common = {"encoder": "encode", "probe_size": probe, "max_overhead": math.inf}
    return {
        "GeometryMonitor": GeometryMonitor(**common, **(LIGHT_GEOMETRY if light else {})),
        "RecoveryMonitor": RecoveryMonitor(**common, **(LIGHT_RECOVERY if light else {})),
        "LikelihoodMonitor": LikelihoodMonitor(**common),
    }


def dcgan_monitors(probe: int, light: bool) -> dict[str, Callback]:
    """``examples/dcgan_digits.py``'s monitors (``light``: lighter, top 4 values)."""
    if light:
        common = {"decoder": "generator", "probe_size": probe, "max_overhead": math.inf}
        geometry = GeometryMonitor(**common, top_k=4, **LIGHT_GEOMETRY)
        recovery = RecoveryMonitor(**common, **LIGHT_RECOVERY)
    else:
        geometry, recovery = dcgan_digits.monitors(probe, every=1)
    return {f"GeometryMonitor (top_k={geometry.top_k})": geometry, "RecoveryMonitor": recovery}


def cases(scale: Scale) -> tuple[list[Case], str]:
    """The example models' cases, and whether the DDPM case is present (and why not)."""

    def vae_data(seed: int) -> DigitsDataModule:
        return DigitsDataModule(scale.n_train, 256, 64, seed)

    def dcgan_data(seed: int) -> UpsampledDigits:
        return UpsampledDigits(28, n_train=scale.n_train, n_val=256, batch_size=64, seed=seed)

    def dcgan() -> dcgan_digits.DigitsDCGAN:
        return dcgan_digits.DigitsDCGAN(width=scale.dcgan_width)

    def vae() -> DigitsVAE:
        return DigitsVAE(latent_dim=8)

    found = [
        Case("demo VAE (latent 8)", vae, vae_data, lambda p: vae_monitors(p, scale.light)),
        Case(
            f"DCGAN (latent 100, width {scale.dcgan_width})",
            dcgan,
            dcgan_data,
            lambda p: dcgan_monitors(p, scale.light),
        ),
    ]
    ddpm, status = diffusion_case(scale)
    return ([*found, ddpm] if ddpm else found), status


def trainer(
    device: torch.device, epochs: int, callbacks: list[Callback], logger: Any, **kwargs: Any
) -> L.Trainer:
    """A ``Trainer`` on ``device`` with no checkpoints, bar, summary or sanity check (so that
    times are of training and the callbacks); ``kwargs`` go to it too."""
    return L.Trainer(
        accelerator="gpu" if device.type == "cuda" else device.type,
        devices=[device.index] if device.index is not None else 1,
        max_epochs=epochs,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def measure_case(case: Case, device: torch.device, scale: Scale, seed: int) -> dict:
    """Epoch seconds and peaks without monitors; each monitor's measurements with them."""
    epochs, probe = scale.epochs, scale.probe
    clock = EpochMeter(device)
    L.seed_everything(seed, verbose=False)
    trainer(device, epochs, [clock], False).fit(case.model(), datamodule=case.data(seed))
    monitors = case.monitors(probe)
    if not monitors:
        return {"epochs": clock.meter.records, "monitors": {}}
    meters = {label: Meter(device) for label in monitors}
    for label, monitor in monitors.items():
        time_hooks(monitor, defaultdict(float), meters[label])
    with tempfile.TemporaryDirectory() as tmp:
        logger = False if scale.light else TensorBoardLogger(tmp, "gpu", default_hp_metric=False)
        L.seed_everything(seed, verbose=False)
        marks = EpochMarks(list(meters.values()))
        watched = trainer(device, epochs, [marks, *monitors.values()], logger)
        watched.fit(case.model(), datamodule=case.data(seed))
    per_epoch = {label: per_epoch_records(meter) for label, meter in meters.items()}
    return {"epochs": clock.meter.records, "monitors": per_epoch}


def per_epoch_records(meter: Meter) -> list[tuple[float, int]]:
    """A monitor's epoch-end hooks of each epoch (validation end, training end): their seconds
    summed and their peaks' maximum, per epoch."""
    bounds = [*meter.marks, len(meter.records)]
    groups = [meter.records[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return [(sum(s for s, _ in g), max(p for _, p in g)) for g in groups]


def later(values: list[float]) -> float:
    """The median after the first (warm-up) value; the first when there is only one."""
    return statistics.median(values[1:] or values)
