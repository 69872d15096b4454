"""What every memwatch monitor shares: configuration checks, probes, schedule, budget, logging.

A monitor names the module's decoder (and optional encoder) by attribute, draws a fixed train and
validation probe when training starts, and at the end of every ``every_n_epochs``-th training epoch
(after its validation when it validates, else at the end of its training) measures a slice of the
probe inside :func:`~lightning_memwatch.callbacks.machinery.isolation.measurement_context`. The
logged statistics are taken over the latest value of every probe sample
(:mod:`~lightning_memwatch.callbacks.machinery.rolling`), and logged with one ``pl_module.log_dict``
call. Subclasses implement :meth:`MemwatchMonitor.measure` and :attr:`MemwatchMonitor.families`; no
maths lives here.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_memwatch.callbacks.machinery.attach import check_setup, prepare_probes
from lightning_memwatch.callbacks.machinery.budget import CostBudget
from lightning_memwatch.callbacks.machinery.costs import UnitCosts, Work, time_decoder
from lightning_memwatch.callbacks.machinery.latent_views import LatentSize, latent_shape, numel
from lightning_memwatch.callbacks.machinery.measuring import Measuring
from lightning_memwatch.callbacks.machinery.naming import check_name
from lightning_memwatch.callbacks.machinery.parts import ModelParts
from lightning_memwatch.callbacks.machinery.probes import InputKey
from lightning_memwatch.callbacks.machinery.readers import (
    check_lightning_readers,
    silence_sync_dist_advice,
)
from lightning_memwatch.callbacks.machinery.rolling import RollingTable
from lightning_memwatch.callbacks.machinery.summary import (
    FitVerdict,
    last_trainer,
    monitor_summary,
    remember_trainer,
)
from lightning_memwatch.functional.checks import check_int

log = logging.getLogger(__name__)


SPLITS = ("train", "val")


class MemwatchMonitor(Measuring, ModelParts, FitVerdict, Callback):
    """Base class of the monitors: the probe / context / schedule / budget / logging glue.

    Before the first training step every monitor draws its probes and runs the encoder and the
    decoder once on them (:mod:`~lightning_memwatch.callbacks.machinery.preflight`), so that a
    misconfiguration fails then, with a message that names the fix. Two monitors of one class in
    one Trainer need distinct ``state_key`` (Lightning refuses the Trainer otherwise): give them
    another ``seed`` or ``probe_size`` (two ``GeometryMonitor`` of different ``families`` are
    distinct already); and disjoint ``logged_keys`` (checked at setup).

    Args:
        decoder: name of the module's attribute (module or method) mapping latents to outputs,
            dotted for a submodule (``"model.decoder"``); ``"auto"``: the first of ``decode``,
            ``decoder``, ``generator`` that the module has (logged at info level). It takes
            latents of the shape the encoder gives (or ``latent_dim``): flat ``(B, m)`` or
            latent maps such as ``(B, 4, 8, 8)``, measured through their flat view
            (:mod:`~lightning_memwatch.callbacks.machinery.latent_views`). Its output may be a
            tensor, a tuple (first element), a mapping or an object with attributes
            (``ModelOutput``, diffusers' ``DecoderOutput``: the ``decoder_output`` entry, else
            its only tensor, else a usual name such as ``sample``) or a distribution (its mean)
            (:mod:`~lightning_memwatch.callbacks.machinery.adapters`).
        encoder: name of an attribute mapping inputs to latents of any shape (a tensor, a tuple
            whose first element is the latents, or a distribution whose mean is, diffusers'
            ``latent_dist`` too; a mapping or object is read by ``encoder_output``). ``None``:
            latents come from latent recovery. ``"auto"``: the first of ``encode``, ``encoder``
            that the module has, else none (logged at info level).
        latent_dim: latent size: ``m`` for flat latents, or the shape of one sample's latent
            map (``(4, 8, 8)``); ``None``: the encoder's output, else a ``latent_dim``
            attribute or hyperparameter of the module (an integer or a tuple).
        probe_size: samples per split (train and validation) in the probe. A measurement covers
            a slice of it (the cost budget sizes the slice, at least 16 samples) and the logged
            statistics are over the latest value of every sample measured so far;
            ``memwatch/<family>/staleness`` is the age in epochs of the oldest one. The probe
            holds distinct samples (equal inputs count once); when a loader yields fewer (or
            fewer distinct ones), both splits hold as many as the smaller allows
            (``effective_probe_size``), with one warning; fewer than 2 is an error
            (:mod:`~lightning_memwatch.callbacks.machinery.drawing`).
        every_n_epochs: measure at the end of every n-th training epoch (epochs ``n - 1``,
            ``2n - 1``, ... counted from 0), after its validation if it validates, else at the
            end of its training (a module without ``validation_step``, ``limit_val_batches=0``,
            or an epoch that ``check_val_every_n_epoch`` skips).
        input_key: picks the input out of a dataset sample (tuple index or dict key; ``None``: the
            sample is the input); with ``preprocess``, out of its result unless that is a tensor.
        max_overhead: share of the run's wall time outside the monitors that all memwatch
            monitors of the ``Trainer`` together may spend, a positive number (``0.05``: 5%); the
            smallest value among them wins, and each of ``N`` monitors gets ``1 / N`` of it.
            ``float("inf")`` turns the budget off, so that every ``every_n_epochs``-th epoch is
            measured on the whole probe (:mod:`~lightning_memwatch.callbacks.machinery.budget`).
        seed: seeds the probe draw and every random start of the monitor (own generator), and
            the global RNGs (isolated) while the probe samples are read, so that augmentations in
            ``__getitem__`` give the same probe inputs at every gather.
        decoder_output: the key (mapping) or attribute (object) of the decoder's output that is
            the output batch; ``None``: a mapping's or object's only tensor.
        encoder_output: the same for the encoder's output (the latents, or for
            ``LikelihoodMonitor`` the posterior).
        preprocess: name of a module attribute that turns a batch of probe samples, collated by
            the loader's ``collate_fn`` as ``training_step`` receives it, into the model's inputs
            (Lightning's autoencoder: ``"_prepare_batch"``); applied once, when the probe is
            gathered, on the module's device. The inputs are then cast to the decoder's
            parameter dtype if floating; integer inputs fail (convert them in ``preprocess``).
    """

    #: Families this monitor can measure; subclasses set it.
    known_families: tuple[str, ...] = ()
    #: The splits whose probes are cut to one size, ``effective_probe_size``.
    tied_splits: tuple[str, ...] = SPLITS

    def __init__(
        self,
        decoder: str = "decoder",
        encoder: str | None = None,
        latent_dim: LatentSize | None = None,
        probe_size: int = 64,
        every_n_epochs: int = 1,
        input_key: InputKey = 0,
        max_overhead: float = 0.05,
        seed: int = 0,
        *,
        decoder_output: str | None = None,
        encoder_output: str | None = None,
        preprocess: str | None = None,
    ) -> None:
        super().__init__()
        check_name("decoder", decoder, optional=False)
        check_name("encoder", encoder)
        self.preprocess_name = check_name("preprocess", preprocess)
        for name, key in (("decoder_output", decoder_output), ("encoder_output", encoder_output)):
            if key is not None and (not isinstance(key, str) or not key):
                raise ValueError(f"Expected `{name}` to be an output's key or None but got {key!r}")
        self.decoder_output, self.encoder_output = decoder_output, encoder_output
        #: the per-sample latent shape (``(m,)`` for flat latents), recorded when training
        #: starts from the encoder's output, else from ``latent_dim``
        self.latent_shape = None if latent_dim is None else latent_shape(latent_dim)
        check_int("probe_size", probe_size)
        check_int("every_n_epochs", every_n_epochs)
        if input_key is not None and (
            isinstance(input_key, bool) or not isinstance(input_key, (int, str))
        ):
            raise ValueError(
                "Expected `input_key` to be a tuple index, a dict key or None but got "
                f"{input_key!r}"
            )
        if (
            isinstance(max_overhead, bool)
            or not isinstance(max_overhead, (int, float))
            or not max_overhead > 0
        ):
            raise ValueError(
                "Expected `max_overhead` to be a positive share of the training time (or inf for "
                f"no budget) but got {max_overhead!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Expected `seed` to be an integer but got {seed!r}")
        #: the arguments as given (``"auto"`` too), and the attributes they name (at setup)
        self.decoder_argument, self.encoder_argument = decoder, encoder
        self.decoder_name, self.encoder_name = decoder, encoder
        self.latent_dim = None if self.latent_shape is None else numel(self.latent_shape)
        self.probe_size, self.every_n_epochs, self.input_key = probe_size, every_n_epochs, input_key
        self.max_overhead, self.seed = float(max_overhead), seed
        self.budget = CostBudget(self.max_overhead, probe_size)
        #: samples per split in the probe as drawn: ``probe_size``, or fewer when the loaders
        #: yield fewer distinct samples (set when training starts, saved in the state)
        self.effective_probe_size = probe_size
        self.indices: dict[str, Tensor] = {}
        self.inputs: dict[str, Tensor] = {}
        self.tables: dict[str, RollingTable] = {}
        self.cursor = 0
        self.measurements = 0
        self.dataset_sizes: dict[str, int] = {}
        self.last_logged_epoch: int | None = None
        self.last_checked_epoch: int | None = None
        #: the values of the latest measurement, as floats (``summary()`` reads them)
        self.last_scalars: dict[str, float] = {}
        self._fitting = True
        self._warned_no_probe = False
        self._layout_written = False
        self._figures_at = 0  # the measurement that last drew the figures
        self._stale = False  # whether callback_metrics may hold this monitor's earlier values
        self._costs: dict[str, tuple[float, float, bool]] = {}
        self._keys: dict[str, tuple[str, ...]] | None = None

    # ----------------------------------------------------------------- configuration
    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            decoder=self.decoder_argument, probe_size=self.probe_size, seed=self.seed
        )

    @property
    def logged_keys(self) -> frozenset[str]:
        """Every key this monitor can log (used by ``MemorizationEarlyStopping`` at setup)."""
        raise NotImplementedError

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._resolve_names(pl_module)
        check_setup(self, trainer, pl_module, stage)
        self._keys = None
        remember_trainer(self, trainer)
        self.budget.attach(trainer, self.state_key)
        check_lightning_readers(self, trainer)
        silence_sync_dist_advice()
        self._resolve_latent_shape(pl_module)

    # ----------------------------------------------------------------------- probes
    def probe_requests(self) -> dict[str, tuple[str, int]]:
        """Per split, the argument that sizes its probe and the size it asks for."""
        return {split: ("probe_size", self.probe_size) for split in SPLITS}

    def _prepare_probes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw (or, after a resume, re-gather) the probes and run the model once on them."""
        prepare_probes(self, trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.budget.start()
        with self.budget.charged_start():  # the probe, its checks and the timing count too
            self._prepare_probes(trainer, pl_module)  # also without validation data loaded
            if self.max_overhead != math.inf:
                self.budget.configure(self, self.unit_costs(pl_module))

    def unit_costs(self, pl_module: pl.LightningModule) -> UnitCosts | None:
        """The model's calls timed when training starts, which :meth:`work` is priced in
        (:func:`~lightning_memwatch.callbacks.machinery.costs.time_decoder`)."""
        return time_decoder(self, pl_module)

    @property
    def uses_gradients(self) -> bool:
        """Whether a measurement differentiates the decoder in reverse mode (latent recovery)."""
        return "recovery" in self.families or self.encoder_name is None

    def work(self, family: str, size: int) -> Work | None:
        """The decoder work of ``family`` on ``size`` samples per split
        (:class:`~lightning_memwatch.callbacks.machinery.costs.Work`), which the budget prices
        with the timed decoder calls; ``None``: not counted (the budget then assumes a
        generous number of forward passes)."""
        return None

    # ---------------------------------------------------------------------- verdict
    def summary(self, trainer: pl.Trainer | None = None) -> dict[str, Any]:
        """What this monitor did in the latest fit, as a dict: the epochs it measured
        (``measured_epochs`` of ``epochs``), the share of its probe covered (``None`` for a
        monitor whose statistics are not per sample, as C_T), the last train /
        val / gap / effect bound of each family (``values``), the seconds it spent and their
        ``share`` of the run, the families its budget could never afford, and ``advice``: for
        a monitor with fewer than 3 measurements the one setting to change and its predicted
        seconds (:mod:`~lightning_memwatch.callbacks.machinery.summary`). ``trainer``: the one
        it was last attached to by default."""
        return monitor_summary(self, trainer or last_trainer(self))

    @property
    def families(self) -> tuple[str, ...]:
        raise NotImplementedError

    def measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: dict[str, Tensor],
        rows: Tensor,
    ) -> dict[str, dict[str, Any]]:
        """Measure every family on ``inputs``, the probe ``rows`` of each split (a slice of the
        probe, on the module's device; each rank measures its ``shard`` of the per-sample work
        and hands it to :meth:`rolled`). Returns the scalars to log per family, from
        :meth:`timed`."""
        raise NotImplementedError

    # ----------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "indices": {split: idx.clone() for split, idx in self.indices.items()},
            "budget": self.budget.state_dict(),
            "last_logged_epoch": self.last_logged_epoch,
            "latent_dim": self.latent_dim,
            "latent_shape": self.latent_shape,
            "cursor": self.cursor,
            "measurements": self.measurements,
            "tables": {family: table.state_dict() for family, table in self.tables.items()},
            "dataset_sizes": dict(self.dataset_sizes),
            "effective_probe_size": self.effective_probe_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.indices = {split: idx.clone() for split, idx in state_dict["indices"].items()}
        self.budget.load_state_dict(state_dict["budget"])
        self.last_logged_epoch = state_dict["last_logged_epoch"]
        self.latent_dim = state_dict["latent_dim"]
        shape = state_dict.get("latent_shape")
        if shape is None and self.latent_dim is not None:  # a checkpoint of flat latents
            shape = (self.latent_dim,)
        self.latent_shape = None if shape is None else tuple(shape)
        self.cursor = state_dict.get("cursor", 0)
        self.measurements = state_dict.get("measurements", 0)
        self.tables = {}
        for family, table in state_dict.get("tables", {}).items():
            self.tables[family] = RollingTable(self.probe_size)
            self.tables[family].load_state_dict(table)
        self.dataset_sizes = dict(state_dict.get("dataset_sizes", {}))
        self.effective_probe_size = state_dict.get("effective_probe_size", self.probe_size)
        self.inputs = {}
