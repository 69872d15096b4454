"""Class ``mlp`` of ``benchmarks/detection.py``: the demo's MLP VAE (``examples/digits_vae.py``,
latent 8) on the 8 x 8 digits, runs sized as ``examples/vae_memorization.py`` sizes its runs A
and B. Ground truth: the held-out over train median reconstruction error through the encoder's
mean (``detection_truth.py``). ``--long`` adds generalizing runs trained 3x and 9x longer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from detection_classes import N_GENERALIZE, N_MEMORIZE, N_VAL, ModelClass, Options, Plan
from detection_monitors import autoencoder_monitors
from detection_truth import MAX_TRAIN, evaluating, ratio_truth, reconstruction_errors
from digits_vae import DigitsDataModule, DigitsVAE

#: ``--long``: generalizing runs trained 3x and 9x longer (the harmless gap grows with training).
LONG, LONGER = "generalize_long", "generalize_9x"

PLANS = {
    "memorize": Plan(N_MEMORIZE, 8, 8, 60, 6),
    "generalize": Plan(N_GENERALIZE, 64, 1, 20, 2),
    LONG: Plan(N_GENERALIZE, 64, 1, 60, 6),
    LONGER: Plan(N_GENERALIZE, 64, 1, 180, 18),
}


def model_and_data(plan: Plan, seed: int) -> tuple[Any, Any]:
    data = DigitsDataModule(plan.n_train, N_VAL, plan.batch_size, seed, plan.passes)
    return DigitsVAE(latent_dim=8), data


def monitors(plan: Plan, options: Options) -> list[Any]:
    return autoencoder_monitors("encode", plan, options)


def encoder_truth(model: Any, data: Any, fast: bool) -> dict[str, float]:
    """Reconstruction errors through the encoder's mean ``mu(x)`` and the decoder, plain torch:
    ``recon_ratio`` (held-out median over train median) and both medians."""

    def compute() -> dict[str, float]:
        device = next(model.parameters()).device

        def reconstruct(x: Any) -> Any:
            return model.decoder(model.encode(x.to(device))[0]).cpu()

        train = reconstruction_errors(reconstruct, data.train_images[:MAX_TRAIN])
        return ratio_truth(train, reconstruction_errors(reconstruct, data.val_images))

    return evaluating(model)(compute)


#: The ground truth of the classes with an encoder (mlp, conv).
ENCODER_TRUTH: dict[str, Any] = {
    "truth": encoder_truth,
    "truth_key": "recon_ratio",
    "truth_label": "held-out / train median reconstruction error",
}

CLASS = ModelClass(
    "mlp", PLANS, model_and_data, monitors, **ENCODER_TRUTH, long_kinds=(LONG, LONGER)
)
