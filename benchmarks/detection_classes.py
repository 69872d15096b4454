"""The model classes of ``benchmarks/detection.py``: a registry of small modules, one per class.

A class is one module (``detection_mlp.py``, ``detection_conv.py``, ``detection_glo.py``,
``detection_gan.py``, ``detection_ddpm.py``) that builds a :class:`ModelClass`:

- ``plans``: kind (``memorize``, ``generalize``, optional longer generalizing kinds) ->
  :class:`Plan`; ``--fast`` shrinks every plan to :data:`FAST_PLANS`;
- ``model_and_data(plan, seed)``: the ``LightningModule`` and its datamodule, which has
  ``train_images`` and ``val_images`` (the ground truth reads them);
- ``monitors(plan, options)``: the memwatch callbacks of a run (:class:`Options`);
- ``truth(model, data, fast)``: the independent ground truth, computed in the benchmark with
  plain torch / numpy and no memwatch code, a dict of numbers; ``truth_key`` is the headline
  one, ``copy_key`` (or ``None``) the share of generated samples that are copies, whose first
  pass of :data:`COPY_SHARE` times the detection;
- ``val_key``: ``None`` (the module logs a Lightning ``val_loss``) or the truth key that stands
  for the held-out loss (a model without ``validation_step``);
- ``rules()`` / ``tunables()``: rules of this class only (added to the common ones of
  ``detection_rules.py``).

Adding a class: write ``detection_<name>.py`` with its ``CLASS = ModelClass(...)`` and add the
module to :data:`MODULES`. A class whose ``EffectAgreement`` reads other families than the
recovery errors and psi (the DDPM: the diffusion loss and psi) adds its descriptor pair to
``detection_rules.AGREEMENT_PAIRS``, so that the recommended rule reads them.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: Training digits of a memorizing and of a generalizing run; held-out digits of both.
N_MEMORIZE, N_GENERALIZE, N_VAL = 32, 1400, 256
#: Probe samples per split (a memorizing run has 32 training digits).
PROBE = 32
KINDS = ("memorize", "generalize")
#: Ground truth: a run copies once this share of its generated samples are near-copies.
COPY_SHARE = 0.10
#: The class modules, in print order.
MODULES = (
    "detection_mlp",
    "detection_conv",
    "detection_glo",
    "detection_gan",
    "detection_ddpm",
)


class Plan(NamedTuple):
    """One run: training digits, batch, shuffled passes per epoch, epochs, measure every n."""

    n_train: int
    batch_size: int
    passes: int
    epochs: int
    every: int


FAST_PLANS = {"memorize": Plan(N_MEMORIZE, 8, 1, 1, 1), "generalize": Plan(96, 32, 1, 1, 1)}


class Options(NamedTuple):
    """How a run's monitors are set: ``budget`` (``max_overhead``), ``seed``, ``fast``,
    ``probe`` (``probe_size``), ``radii`` (decay radii, ``None``: the default) and
    ``geometry_only`` (the ``GeometryMonitor`` alone)."""

    budget: float
    seed: int
    fast: bool
    probe: int = PROBE
    radii: Any = None
    geometry_only: bool = False


@dataclass(frozen=True)
class ModelClass:
    """One model class of the benchmark (see the module docstring)."""

    name: str
    plans: dict[str, Plan]
    model_and_data: Callable[[Plan, int], tuple[Any, Any]]
    monitors: Callable[[Plan, Options], list[Any]]
    truth: Callable[[Any, Any, bool], dict[str, float]]
    truth_key: str
    truth_label: str
    copy_key: str | None = None
    val_key: str | None = None
    truth_every_epoch: bool = True
    rules: Callable[[], list[Any]] = list
    tunables: Callable[[], list[Any]] = list
    #: kinds that exist only as longer generalizing runs (``--long``)
    long_kinds: tuple[str, ...] = field(default=())

    def plan(self, kind: str, fast: bool) -> Plan:
        if fast:
            return FAST_PLANS["memorize" if kind == "memorize" else "generalize"]
        return self.plans[kind]


def load(modules: tuple[str, ...] = MODULES) -> dict[str, ModelClass]:
    """``{name: ModelClass}`` of the class modules, in order."""
    classes = [importlib.import_module(name).CLASS for name in modules]
    return {c.name: c for c in classes}


def number(value: Any) -> float:
    """``float(value)``, NaN for anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
