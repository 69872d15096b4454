"""Class ``conv`` of ``benchmarks/detection.py``: the conv VAE of ``benchmarks/conv_models.py``
(latent 32) on the digits upsampled to 28 x 28. A check costs 15-20 s (the density family on
784 outputs), so 5 checks a run. Ground truth: as ``mlp``'s, on the upsampled digits."""

from __future__ import annotations

from typing import Any

from conv_models import ConvVAE, UpsampledDigitsDataModule
from detection_classes import N_GENERALIZE, N_MEMORIZE, N_VAL, ModelClass, Plan
from detection_mlp import ENCODER_TRUTH, monitors

PLANS = {
    "memorize": Plan(N_MEMORIZE, 8, 16, 25, 5),
    "generalize": Plan(N_GENERALIZE, 64, 1, 10, 2),
}


def model_and_data(plan: Plan, seed: int) -> tuple[Any, Any]:
    data = UpsampledDigitsDataModule(plan.n_train, N_VAL, plan.batch_size, seed, plan.passes)
    return ConvVAE(latent_dim=32), data


CLASS = ModelClass("conv", PLANS, model_and_data, monitors, **ENCODER_TRUTH)
