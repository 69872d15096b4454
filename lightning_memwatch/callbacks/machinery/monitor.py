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
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_memwatch.callbacks.machinery.adapters import (
    Site,
    adapt_decoder,
    adapt_encoder,
    check_name,
    resolve_attribute,
)
from lightning_memwatch.callbacks.machinery.attach import check_setup, prepare_probes
from lightning_memwatch.callbacks.machinery.budget import CostBudget
from lightning_memwatch.callbacks.machinery.costs import Work, time_decoder
from lightning_memwatch.callbacks.machinery.measuring import Measuring
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


class MemwatchMonitor(Measuring, FitVerdict, Callback):
    """Base class of the monitors: the probe / context / schedule / budget / logging glue.

    Before the first training step every monitor draws its probes and runs the encoder and the
    decoder once on them (:mod:`~lightning_memwatch.callbacks.machinery.preflight`), so that a
    misconfiguration fails then, with a message that names the fix. Two monitors of one class in
    one Trainer need distinct ``state_key`` (Lightning refuses the Trainer otherwise): give them
    another ``seed`` or ``probe_size`` (two ``GeometryMonitor`` of different ``families`` are
    distinct already); and disjoint ``logged_keys`` (checked at setup).

    Args:
        decoder: name of the module's attribute (module or method) mapping ``(B, m)`` latents to
            outputs, dotted for a submodule (``"model.decoder"``). Its output may be a tensor, a
            tuple (first element), a mapping or an object with attributes (``ModelOutput``: the
            ``decoder_output`` entry, else its only tensor) or a distribution (its mean)
            (:mod:`~lightning_memwatch.callbacks.machinery.adapters`).
        encoder: name of an attribute mapping inputs to latents (a tensor, a tuple whose first
            element is the latents, or a distribution whose mean is; a mapping or object is read
            by ``encoder_output``). ``None``: latents come from latent recovery.
        latent_dim: latent size ``m``; ``None``: inferred from the encoder's output, else from a
            ``latent_dim`` attribute or hyperparameter of the module.
        probe_size: samples per split (train and validation) in the probe. A measurement covers
            a slice of it (the cost budget sizes the slice, at least 16 samples) and the logged
            statistics are over the latest value of every sample measured so far;
            ``memwatch/<family>/staleness`` is the age in epochs of the oldest one.
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

    def __init__(
        self,
        decoder: str = "decoder",
        encoder: str | None = None,
        latent_dim: int | None = None,
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
        if latent_dim is not None:
            check_int("latent_dim", latent_dim)
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
        self.decoder_name, self.encoder_name, self.latent_dim = decoder, encoder, latent_dim
        self.probe_size, self.every_n_epochs, self.input_key = probe_size, every_n_epochs, input_key
        self.max_overhead, self.seed = float(max_overhead), seed
        self.budget = CostBudget(self.max_overhead, probe_size)
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
    def uses_decoder(self) -> bool:
        """Whether this monitor calls the decoder (checked at setup and on the probe)."""
        return True

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            decoder=self.decoder_name, probe_size=self.probe_size, seed=self.seed
        )

    @property
    def logged_keys(self) -> frozenset[str]:
        """Every key this monitor can log (used by ``MemorizationEarlyStopping`` at setup)."""
        raise NotImplementedError

    def _attribute(self, pl_module: pl.LightningModule, name: str, role: str) -> Callable[..., Any]:
        return resolve_attribute(pl_module, name, role)

    def decoder(self, pl_module: pl.LightningModule) -> Callable[[Tensor], Tensor]:
        """The decoder, its outputs read as one tensor batch (``decoder_output``)."""
        site = Site(type(self).__name__, "decoder", self.decoder_name)
        fn = self._attribute(pl_module, self.decoder_name, "decoder")
        return adapt_decoder(fn, self.decoder_output, site)

    def encoder(self, pl_module: pl.LightningModule) -> Callable[[Tensor], Any] | None:
        """The encoder (``None`` without one), a mapping output read by ``encoder_output``."""
        if self.encoder_name is None:
            return None
        site = Site(type(self).__name__, "encoder", self.encoder_name)
        fn = self._attribute(pl_module, self.encoder_name, "encoder")
        return adapt_encoder(fn, self.encoder_output, site)

    def _module_latent_dim(self, pl_module: pl.LightningModule) -> int | None:
        for value in (getattr(pl_module, "latent_dim", None), pl_module.hparams.get("latent_dim")):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_setup(self, trainer, pl_module, stage)
        self._keys = None
        remember_trainer(self, trainer)
        self.budget.attach(trainer, self.state_key)
        check_lightning_readers(self, trainer)
        silence_sync_dist_advice()
        if self.latent_dim is None and self.encoder_name is None and self.uses_decoder:
            self.latent_dim = self._module_latent_dim(pl_module)
            if self.latent_dim is None:
                raise ValueError(
                    f"Expected a latent size for {type(self).__name__} but there is no encoder to "
                    "infer it from and the module has no `latent_dim` attribute or hyperparameter: "
                    "pass `latent_dim=`"
                )

    # ----------------------------------------------------------------------- probes
    def _prepare_probes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw (or, after a resume, re-gather) the probes and run the model once on them."""
        prepare_probes(self, trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.budget.start()
        with self.budget.charged_start():  # the probe, its checks and the timing count too
            self._prepare_probes(trainer, pl_module)  # also without validation data loaded
            if self.max_overhead != math.inf:
                self.budget.configure(self, time_decoder(self, pl_module))

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
        (``measured_epochs`` of ``epochs``), the share of its probe covered, the last train /
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
            "cursor": self.cursor,
            "measurements": self.measurements,
            "tables": {family: table.state_dict() for family, table in self.tables.items()},
            "dataset_sizes": dict(self.dataset_sizes),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.indices = {split: idx.clone() for split, idx in state_dict["indices"].items()}
        self.budget.load_state_dict(state_dict["budget"])
        self.last_logged_epoch = state_dict["last_logged_epoch"]
        self.latent_dim = state_dict["latent_dim"]
        self.cursor = state_dict.get("cursor", 0)
        self.measurements = state_dict.get("measurements", 0)
        self.tables = {}
        for family, table in state_dict.get("tables", {}).items():
            self.tables[family] = RollingTable(self.probe_size)
            self.tables[family].load_state_dict(table)
        self.dataset_sizes = dict(state_dict.get("dataset_sizes", {}))
        self.inputs = {}
