"""Class ``glo`` of ``benchmarks/detection.py``: the GLO of ``examples/glo_recovery.py``
(latents on the sphere, no encoder, no ``validation_step``): the monitors recover the probe's
latents. Ground truth: the held-out over train median error of each digit's latent recovered by
plain-torch Adam (``detection_truth.recovered_errors``, 32 + 32 digits at every check), whose
held-out median also stands for the validation loss a model without encoder lacks.
``--long`` adds generalizing runs trained 3x and 9x longer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import lightning as L
from detection_classes import N_GENERALIZE, N_MEMORIZE, N_VAL, ModelClass, Options, Plan
from detection_mlp import LONG, LONGER
from detection_monitors import autoencoder_monitors
from detection_truth import evaluating, ratio_truth, recovered_errors
from digits_vae import DigitsDataModule
from glo_recovery import GLO

#: Digits per split whose latents the ground truth recovers (all of a memorizing run's), Adam
#: steps and prior starts per digit: 2-3 s a check on a loaded 2-core machine.
TRUTH_DIGITS, TRUTH_STEPS, TRUTH_STARTS = 32, 150, 3

PLANS = {
    "memorize": Plan(N_MEMORIZE, 8, 8, 60, 6),
    "generalize": Plan(N_GENERALIZE, 64, 1, 20, 2),
    LONG: Plan(N_GENERALIZE, 64, 1, 60, 6),
    LONGER: Plan(N_GENERALIZE, 64, 1, 180, 18),
}


class IndexedDigits(L.LightningDataModule):
    """:class:`digits_vae.DigitsDataModule`'s split as ``(index, image)`` pairs, what the GLO
    trains on (its latents are an embedding indexed by the training sample)."""

    def __init__(self, plan: Plan, seed: int) -> None:
        super().__init__()
        base = DigitsDataModule(plan.n_train, N_VAL, plan.batch_size, seed, plan.passes)
        self.train_images, self.val_images = base.train_images, base.val_images
        self.batch_size, self.passes = plan.batch_size, plan.passes

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(torch.arange(len(self.train_images)), self.train_images)
        sampler = RandomSampler(data, num_samples=self.passes * len(data))
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        data = TensorDataset(torch.arange(len(self.val_images)), self.val_images)
        return DataLoader(data, batch_size=256)


class ProbeGLO(GLO):
    """``examples/glo_recovery.py``'s GLO with a ``latent_dim`` attribute for the monitors (the
    example keeps it in ``hparams`` only, which also works)."""

    def __init__(self, n_samples: int) -> None:
        super().__init__(n_samples)
        self.latent_dim = self.hparams.latent_dim


def model_and_data(plan: Plan, seed: int) -> tuple[Any, Any]:
    return ProbeGLO(plan.n_train), IndexedDigits(plan, seed)


def monitors(plan: Plan, options: Options) -> list[Any]:
    return autoencoder_monitors(None, plan, options)


def recovery_truth(model: Any, data: Any, fast: bool) -> dict[str, float]:
    """Recovered errors of the first 32 training and held-out digits (``fast``: 16 and 20 Adam
    steps): ``recon_ratio`` and both medians."""
    n, steps = (16, 20) if fast else (TRUTH_DIGITS, TRUTH_STEPS)

    def compute() -> dict[str, float]:
        device = next(model.parameters()).device
        errors = [
            recovered_errors(
                model.decoder, images[:n].to(device), model.latent_dim, steps, TRUTH_STARTS
            )
            for images in (data.train_images, data.val_images)
        ]
        return ratio_truth(*errors)

    return evaluating(model)(compute)


CLASS = ModelClass(
    name="glo",
    plans=PLANS,
    model_and_data=model_and_data,
    monitors=monitors,
    truth=recovery_truth,
    truth_key="recon_ratio",
    truth_label="held-out / train median error of latents recovered by Adam",
    val_key="recon_val",
    truth_every_epoch=False,
    long_kinds=(LONG, LONGER),
)
