"""Shared by the realistic-shape examples (``dcgan_digits.py``, ``latent_decoder.py``): digits
upsampled to a generator's output size, a fit timed with and without the monitors, and the
table of the measured keys.

The 8 x 8 digits of ``sklearn.datasets.load_digits`` are upsampled bilinearly to ``size x size``
(values stay in ``[0, 1]``); the split is :class:`digits_vae.DigitsDataModule`'s, so the
validation digits are the same for every ``n_train`` at a seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from digits_vae import DigitsDataModule, cpu_trainer
from scipy import stats
from torch import Tensor

#: Descriptors printed with their ``/train``, ``/val`` and ``/gap`` (``ks_pvalue`` where logged).
DESCRIPTORS = (
    "memwatch/spectrum/log_volume",
    "memwatch/spectrum/local_rank",
    "memwatch/spectrum/intrinsic_dim",
    "memwatch/spectrum/log_condition",
    "memwatch/density/dip",
    "memwatch/density/dip/prior",
    "memwatch/density/dip/volume",
    "memwatch/density/decay",
    "memwatch/density/decay/prior",
    "memwatch/density/decay/volume",
)
#: Recovery keys, printed as they are.
RECOVERY = (
    "memwatch/recovery/mre/train",
    "memwatch/recovery/mre/val",
    "memwatch/recovery/mre_gap",
    "memwatch/recovery/ks_pvalue",
)
FAMILIES = ("spectrum", "density", "recovery")


def typical_norms(m: int) -> tuple[float, float]:
    """The 0.001 and 0.999 quantiles of ``|z|`` for ``z ~ N(0, I_m)`` (chi, ``m`` dof)."""
    low, high = stats.chi.ppf([0.001, 0.999], df=m)
    return float(low), float(high)


def recovered_norms(recovery: Any) -> Tensor:
    """Norms of the latents a ``RecoveryMonitor`` last found, train and val probe."""
    store = recovery.latent_store
    return torch.cat([store.z[split] for split in ("train", "val")]).flatten(1).norm(dim=1)


def upsample(images: Tensor, size: int) -> Tensor:
    """``(N, 1, 8, 8)`` digits bilinearly resized to ``(N, 1, size, size)``, clamped to [0, 1]."""
    return torch.nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False
    ).clamp(0.0, 1.0)


class UpsampledDigits(DigitsDataModule):
    """:class:`digits_vae.DigitsDataModule` with its images upsampled to ``size x size``."""

    def __init__(self, size: int = 28, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.train_images = upsample(self.train_images, size)
        self.val_images = upsample(self.val_images, size)


def timed_fit(
    make_model: Callable[[], L.LightningModule],
    make_data: Callable[[], L.LightningDataModule],
    epochs: int,
    callbacks: Sequence[Any],
    seed: int,
    logger: Any = False,
) -> tuple[L.Trainer, float]:
    """Seed, build, fit ``epochs`` epochs with ``callbacks`` and ``logger``; return the trainer
    and the fit's wall seconds."""
    L.seed_everything(seed, verbose=False)
    model, data = make_model(), make_data()
    trainer = cpu_trainer(epochs, logger, list(callbacks))
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return trainer, time.perf_counter() - start


def measured_table(
    metrics: dict[str, Tensor], monitors: Sequence[Any], fit_with: float, fit_without: float
) -> tuple[dict[str, float], str]:
    """The last measurement as ``{key: value}`` and as a markdown table: each descriptor's
    train, val, gap (and KS p), the recovery keys, each family's seconds, probe size and
    non-finite count of that measurement (``memwatch/<family>/...``), and the fit-time ratio
    with / without the monitors."""
    values = {k: float(v) for k, v in metrics.items() if k.startswith("memwatch/")}
    lines = ["| key | train | val | gap | ks_pvalue |", "|---|---:|---:|---:|---:|"]
    for key in DESCRIPTORS:
        cells = [values.get(f"{key}/{part}") for part in ("train", "val", "gap", "ks_pvalue")]
        if all(c is None for c in cells):
            continue
        text = " | ".join("" if c is None else f"{c:.4g}" for c in cells)
        lines.append(f"| {key} | {text} |")
    lines += ["", "| key | value |", "|---|---:|"]
    for key in RECOVERY:
        if key in values:
            lines.append(f"| {key} | {values[key]:.4g} |")
    for family in FAMILIES:
        for what in ("seconds", "probe_size", "nonfinite"):
            key = f"memwatch/{family}/{what}"
            if key in values:
                lines.append(f"| {key} | {values[key]:.4g} |")
    measurements = [getattr(m, "measurements", 0) for m in monitors]
    values["fit_seconds_with"], values["fit_seconds_without"] = fit_with, fit_without
    values["fit_ratio"] = fit_with / fit_without
    values["measurements"] = float(max(measurements, default=0))
    lines.append(f"| measurements per monitor | {values['measurements']:.0f} |")
    lines.append(f"| fit seconds with / without monitors | {fit_with:.1f} / {fit_without:.1f} |")
    lines.append(f"| fit-time ratio (with / without) | {values['fit_ratio']:.2f} |")
    return values, "\n".join(lines)
