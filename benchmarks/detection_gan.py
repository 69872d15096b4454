"""Class ``gan`` of ``benchmarks/detection.py``: a GAN without encoder, written the way
Lightning's GAN template writes one (``examples/gan_memorization.py``'s ``DigitsGAN``: a
``generator`` attribute, manual optimization, no ``validation_step``), memorizing on 32 digits
(6,000 generator steps, where that example's run A copies all 32) and generalizing on 1,400
(5,808 steps).

Monitors: ``GeometryMonitor`` and ``RecoveryMonitor`` on the generator without encoder (the
probe's latents come from latent recovery; the geometry reads them), ``SampleMonitor`` (C_T on
512 samples against its default held-out probe of 64). ``--gan-probes`` repeats the
generalizing runs at larger ``probe_size``: a memorizing run has 32 training digits, which bound
its train probe, and the package takes one ``probe_size`` for both splits, so its runs stay at
32 whatever the probe of the generalizing runs.

Ground truth at every epoch (``detection_truth.copy_shares`` of 512 samples at fixed latents,
numpy): the near-copy share ``d1 / d2 < 1/3``, the share closer to a training digit than to a
held-out one, and the held-out digits' median distance to the nearest sample, which stands for
the validation loss the template does not have.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from detection_classes import N_GENERALIZE, N_MEMORIZE, N_VAL, ModelClass, Options, Plan
from detection_truth import copy_shares
from digits_vae import DigitsDataModule
from gan_memorization import DigitsGAN
from nearest_copies import generated_samples

from lightning_memwatch import GeometryMonitor, RecoveryMonitor, SampleMonitor

#: Samples the ground truth generates (at fixed latents, every epoch).
TRUTH_SAMPLES = 512

PLANS = {
    "memorize": Plan(N_MEMORIZE, 32, 100, 60, 6),
    "generalize": Plan(N_GENERALIZE, 32, 1, 132, 13),
}


def model_and_data(plan: Plan, seed: int) -> tuple[Any, Any]:
    data = DigitsDataModule(plan.n_train, N_VAL, plan.batch_size, seed, plan.passes)
    return DigitsGAN(), data


def probe_for(plan: Plan, probe: int) -> int:
    """The probe a run can have: at most its training digits."""
    return min(probe, plan.n_train)


def monitors(plan: Plan, options: Options) -> list[Any]:
    """Geometry and recovery at their defaults on ``generator`` with the run's probe, seed,
    schedule and budget; ``SampleMonitor`` at its defaults but for the schedule and budget."""
    schedule = {
        "every_n_epochs": plan.every,
        "max_overhead": options.budget,
        "seed": options.seed,
    }
    common = {
        "decoder": "generator",
        "probe_size": 16 if options.fast else probe_for(plan, options.probe),
        **schedule,
    }
    geometry = {} if options.radii is None else {"radii": options.radii}
    out: list[Any] = [GeometryMonitor(**common, **geometry)]
    if options.geometry_only:
        return out
    recovery = {"steps": 5, "restarts": 1} if options.fast else {}
    out.append(RecoveryMonitor(**common, **recovery))
    sample_size = {"probe_size": 16, "num_generated": 128} if options.fast else {}
    out.append(SampleMonitor(decoder="generator", **schedule, **sample_size))
    return out


def copy_truth(model: Any, data: Any, fast: bool) -> dict[str, float]:
    """:func:`detection_truth.copy_shares` of 512 samples at fixed latents (seed 0)."""
    samples = generated_samples(model.generator, model.hparams.latent_dim, TRUTH_SAMPLES)
    return copy_shares(samples, data.train_images, data.val_images)


CLASS = ModelClass(
    name="gan",
    plans=PLANS,
    model_and_data=model_and_data,
    monitors=monitors,
    truth=copy_truth,
    truth_key="copy_share",
    truth_label="share of 512 samples with d1/d2 < 1/3 to the training digits",
    copy_key="copy_share",
    val_key="heldout_distance",
)
