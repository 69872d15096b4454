"""The training runs of ``benchmarks/detection.py``: three model classes, memorizing and
generalizing, with every memwatch monitor recorded per measurement epoch.

- ``mlp``: the demo's MLP VAE (``examples/digits_vae.py``, latent 8) on the 8 x 8 digits, runs
  sized as ``examples/vae_memorization.py`` sizes its runs A and B;
- ``conv``: the conv VAE of ``benchmarks/conv_models.py`` (latent 32) on the digits upsampled to
  28 x 28;
- ``glo``: the GLO of ``examples/glo_recovery.py`` (latents on the sphere, no encoder, no
  ``validation_step``): the monitors recover the probe's latents, and the held-out loss is the
  validation probe's median recovery error (``memwatch/recovery/mre/val``), the only
  held-out reconstruction loss a model without an encoder has.

Memorizing runs train on 32 digits, generalizing runs on 1,400; both are validated on the same
256 held-out digits of the seed's split. :class:`Recorder` keeps, at every epoch a monitor
measured, every logged ``memwatch/`` key and every per-sample value of its rolling table.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import lightning as L
import torch
from conv_models import ConvVAE, UpsampledDigitsDataModule
from digits_vae import DigitsDataModule, DigitsVAE, cpu_trainer
from glo_recovery import GLO
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from lightning_memwatch import GeometryMonitor, LikelihoodMonitor, RecoveryMonitor, SampleMonitor

#: Training digits of a memorizing and of a generalizing run; held-out digits of both.
N_MEMORIZE, N_GENERALIZE, N_VAL = 32, 1400, 256
#: Probe samples per split (a memorizing run has 32 training digits).
PROBE = 32
KINDS = ("memorize", "generalize")
#: ``--long``: generalizing runs trained 3x longer (the harmless gap grows with training), for
#: the classes where that is affordable on 2 cores (a conv check costs 15-20 s).
LONG = "generalize_long"
#: ``--long`` also: generalizing runs trained 9x longer.
LONGER = "generalize_9x"
LONG_KINDS = {LONG: "3x", LONGER: "9x"}
LONG_CLASSES = ("mlp", "glo")
CLASSES = ("mlp", "conv", "glo")


class Plan(NamedTuple):
    """One run: training digits, batch, shuffled passes per epoch, epochs, measure every n."""

    n_train: int
    batch_size: int
    passes: int
    epochs: int
    every: int


#: (class, kind) -> plan of the full benchmark; ``--fast`` shrinks every plan to a smoke run.
PLANS = {
    ("mlp", "memorize"): Plan(N_MEMORIZE, 8, 8, 60, 6),
    ("mlp", "generalize"): Plan(N_GENERALIZE, 64, 1, 20, 2),
    # conv: a check costs 15-20 s (the density family on 784 outputs), so 5 checks a run
    ("conv", "memorize"): Plan(N_MEMORIZE, 8, 16, 25, 5),
    ("conv", "generalize"): Plan(N_GENERALIZE, 64, 1, 10, 2),
    ("glo", "memorize"): Plan(N_MEMORIZE, 8, 8, 60, 6),
    ("glo", "generalize"): Plan(N_GENERALIZE, 64, 1, 20, 2),
    ("mlp", LONG): Plan(N_GENERALIZE, 64, 1, 60, 6),
    ("glo", LONG): Plan(N_GENERALIZE, 64, 1, 60, 6),
    ("mlp", LONGER): Plan(N_GENERALIZE, 64, 1, 180, 18),
    ("glo", LONGER): Plan(N_GENERALIZE, 64, 1, 180, 18),
}
FAST_PLAN = {"memorize": Plan(N_MEMORIZE, 8, 1, 1, 1), "generalize": Plan(96, 32, 1, 1, 1)}


def plan(model_class: str, kind: str, fast: bool) -> Plan:
    if fast:
        return FAST_PLAN["generalize" if kind in LONG_KINDS else kind]
    return PLANS[(model_class, kind)]


class IndexedDigits(L.LightningDataModule):
    """:class:`digits_vae.DigitsDataModule`'s split as ``(index, image)`` pairs, what the GLO
    trains on (its latents are an embedding indexed by the training sample)."""

    def __init__(self, plan_: Plan, seed: int) -> None:
        super().__init__()
        base = DigitsDataModule(plan_.n_train, N_VAL, plan_.batch_size, seed, plan_.passes)
        self.train_images, self.val_images = base.train_images, base.val_images
        self.batch_size, self.passes = plan_.batch_size, plan_.passes

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(torch.arange(len(self.train_images)), self.train_images)
        sampler = RandomSampler(data, num_samples=self.passes * len(data))
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        data = TensorDataset(torch.arange(len(self.val_images)), self.val_images)
        return DataLoader(data, batch_size=256)


class ProbeGLO(GLO):
    """``examples/glo_recovery.py``'s GLO, its projection applied after each step; a ``latent_dim``
    attribute for the monitors (the example keeps it in ``hparams`` only, which also works)."""

    def __init__(self, n_samples: int) -> None:
        super().__init__(n_samples)
        self.latent_dim = self.hparams.latent_dim


def model_and_data(model_class: str, plan_: Plan, seed: int) -> tuple[Any, Any]:
    args = (plan_.n_train, N_VAL, plan_.batch_size, seed, plan_.passes)
    if model_class == "mlp":
        return DigitsVAE(latent_dim=8), DigitsDataModule(*args)
    if model_class == "conv":
        return ConvVAE(latent_dim=32), UpsampledDigitsDataModule(*args)
    return ProbeGLO(plan_.n_train), IndexedDigits(plan_, seed)


def monitors(
    model_class: str,
    plan_: Plan,
    budget: float,
    seed: int,
    fast: bool,
    radii: Any = None,
    geometry_only: bool = False,
) -> list[Any]:
    """The monitors at their defaults except ``probe_size`` (32: a memorizing run has 32
    training digits), ``every_n_epochs`` (about 10 checks a run), ``max_overhead`` (``budget``)
    and, in ``fast``, fewer L-BFGS steps. ``radii``: the decay radii (``None``: the default);
    ``geometry_only``: the ``GeometryMonitor`` alone."""
    encoder = None if model_class == "glo" else "encode"
    common: dict[str, Any] = {
        "probe_size": 16 if fast else PROBE,
        "every_n_epochs": plan_.every,
        "max_overhead": budget,
        "seed": seed,
    }
    if model_class == "glo":
        common["input_key"] = 1
    recovery = {"steps": 5, "restarts": 1} if fast else {}
    geometry = {} if radii is None else {"radii": radii}
    out: list[Any] = [GeometryMonitor(encoder=encoder, **common, **geometry)]
    if geometry_only:
        return out
    out.append(RecoveryMonitor(encoder=encoder, **common, **recovery))
    if encoder is not None:  # the importance-sampled likelihood needs q(z|x)
        out.append(
            LikelihoodMonitor(encoder=encoder, **common, **({"num_samples": 8} if fast else {}))
        )
        out.append(SampleMonitor(**common, **({"num_generated": 128} if fast else {})))
    return out


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class Recorder(Callback):
    """At the end of every training epoch: the ``val_loss``, and for each monitor that measured
    in it, its logged ``memwatch/`` keys and its rolling tables' per-sample values (NaN: a row
    not measured yet)."""

    def __init__(self, monitors_: list[Any]) -> None:
        self.monitors = monitors_
        self.val_loss: list[float] = []
        self.checks: list[dict[str, Any]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        metrics = trainer.callback_metrics
        self.val_loss.append(_number(metrics.get("val_loss", math.nan)))
        measured = [m for m in self.monitors if m.last_logged_epoch == epoch]
        if not measured:
            return
        keys = set().union(*(m.logged_keys for m in measured))
        check: dict[str, Any] = {
            "epoch": epoch,
            "scalars": {k: _number(v) for k, v in metrics.items() if k in keys},
            "samples": {},
        }
        for monitor in measured:
            for family, table in monitor.tables.items():
                for name, splits in table.values.items():
                    for split, values in splits.items():
                        key = f"{family}/{name}/{split}"
                        check["samples"][key] = values.tolist()
        self.checks.append(check)


def train(
    model_class: str,
    kind: str,
    seed: int,
    budget: float,
    fast: bool,
    radii: Any = None,
    geometry_only: bool = False,
) -> dict[str, Any]:
    """One run; its per-epoch ``val_loss``, its checks and its cost."""
    plan_ = plan(model_class, kind, fast)
    L.seed_everything(seed, verbose=False)
    model, data = model_and_data(model_class, plan_, seed)
    watched = monitors(model_class, plan_, budget, seed, fast, radii, geometry_only)
    recorder = Recorder(watched)
    trainer = cpu_trainer(plan_.epochs, False, [*watched, recorder])
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    val_loss = recorder.val_loss
    if model_class == "glo":  # the held-out recovery error is the GLO's validation loss
        val_loss = [math.nan] * plan_.epochs
        for check in recorder.checks:
            val_loss[check["epoch"]] = check["scalars"].get("memwatch/recovery/mre/val", math.nan)
    return {
        "model_class": model_class,
        "kind": kind,
        "seed": seed,
        "budget": budget,
        "radii": radii,
        "plan": plan_._asdict(),
        "val_loss": val_loss,
        "checks": recorder.checks,
        "seconds": seconds,
        "measurements": {type(m).__name__: m.measurements for m in watched},
    }
