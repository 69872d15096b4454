"""SampleMonitor: Meehan et al.'s data-copying test ``C_T`` on the generator's samples, run
during training (Meehan, Chaudhuri & Dasgupta, AISTATS 2020)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_memwatch.callbacks.machinery.calling import draw_samples
from lightning_memwatch.callbacks.machinery.copying import copy_measurements
from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.callbacks.machinery.latent_views import LatentSize
from lightning_memwatch.callbacks.machinery.monitor import MemwatchMonitor
from lightning_memwatch.callbacks.machinery.probes import (
    InputKey,
    shard,
)
from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.neighbours import nearest_neighbours, pca_projection, project
from lightning_memwatch.metrics.samples import DataCopying
from lightning_memwatch.viz import as_images, global_step, pairs_grid, tensorboard_writer

FAMILY = "samples"
KEYS = ("ct", "copy_fraction", "heldout_copy_fraction", "nonfinite", "seconds", "probe_size")
#: Generated | nearest training sample pairs shown in TensorBoard.
PAIRS = 8


class SampleMonitor(MemwatchMonitor):
    """Test the generator's samples for data copying (Meehan et al. (2020), sec. 3), while it
    trains.

    At the end of every ``every_n_epochs``-th validation epoch, ``num_generated`` samples are
    generated, and with a fixed training reference ``T`` (``reference_size`` training samples)
    and the validation probe as the held-out sample ``P_n``:

    - ``memwatch/samples/ct``: ``C_T = sum_pi P_n(pi) Z_U(pi) / sum_pi P_n(pi)`` over the
      ``cells`` k-means cells of ``T`` holding more than 20 generated samples, ``Z_U(pi)`` the
      Mann-Whitney z-score of the generated samples' distances to their nearest training
      sample against the held-out samples' (:mod:`~lightning_memwatch.functional.data_copying`;
      as the authors define it, without a tie correction unless ``tie_correction=True``).
      **Strongly negative = data copying**, strongly positive = underfitting, near 0 (null
      spread about ``1 / sqrt(cells)``) = neither;
    - ``memwatch/samples/copy_fraction``: the share of generated samples closer to their nearest
      training sample than that sample is to its own nearest other training sample (1 - Alaa et
      al. 2022's authenticity), and ``memwatch/samples/heldout_copy_fraction``, the same share
      of the held-out probe: what a generator that samples the data distribution would give;
    - ``memwatch/samples/{seconds,probe_size,nonfinite}``: its cost, the held-out probe size it
      used (0 for an epoch the budget skipped), samples with non-finite distances (left out).

    With a ``TensorBoardLogger`` and image outputs: ``memwatch/samples/nearest``, the first
    generated samples each beside its nearest training sample.

    Samples come from the module's ``sampler``, called ``sampler(n, generator=generator)`` when
    it takes a ``generator`` (else ``sampler(n)`` inside an isolated global RNG seeded by
    ``seed``; never positionally, so a sampler such as lucidrains' ``GaussianDiffusion.sample(
    batch_size, return_all_timesteps=False)`` attaches as it is), else from the decoder at ``n``
    latents drawn once from the standard normal prior (flat; reshaped to a latent map's shape
    when ``latent_dim`` is one); both are seeded by ``seed`` and draw the same samples every
    epoch, so the curve moves with the model only. The reference, the
    k-means cells (refit every measurement, seeded, so they follow a trainable ``features``)
    and the PCA projection (fitted at the first measurement) are the same on every rank; each
    rank measures its shard of the held-out and generated samples. When the budget lowers the
    held-out probe to ``s`` samples, ``ceil(num_generated * s / probe_size)`` are generated.

    Args:
        sampler: name of a module method ``(n, generator=None) -> (n, ...)`` samples (or
            ``(n) -> (n, ...)``, seeded through the global RNG); ``None``: the decoder at
            latents from the prior.
        decoder: name of the module's decoder (used without ``sampler``).
        latent_dim: latent size ``m``, or a latent map's shape (``(4, 8, 8)``); ``None``: the
            module's ``latent_dim`` attribute or hyperparameter (needed without ``sampler``
            only).
        probe_size: held-out (validation) samples ``n``.
        reference_size: training samples in the reference ``T``, distinct in content (all the
            distinct ones the training loader yields when it yields fewer); drawn once, seeded,
            saved in the checkpoint.
        num_generated: generated samples ``m``. A cell enters ``C_T`` with more than 20
            generated samples (Meehan et al.'s ``tau``, taken as ``20 / m``); when none has that
            many, ``ct`` is NaN: generate more or use fewer cells.
        cells: k-means cells of the reference (Meehan et al. (2020), sec. 3); every cell should get
            enough held-out samples (about 10 or more) and 20 generated samples.
        features: name of a module attribute applied to samples and data before distances
            (e.g. a fixed feature extractor for images); ``None``: the raw flattened values.
        pca_dim: project the (feature) vectors on the top ``pca_dim`` principal directions of
            the reference, fitted at the first measurement; ``None``: no projection.
        tie_correction: ``True``: the Mann-Whitney z-scores of ``C_T`` use the tie-corrected
            variance (scipy's), which makes exact copies (tied distances 0) score more negative;
            ``False`` (default): Meehan et al.'s untied variance
            (:func:`~lightning_memwatch.functional.stats.mann_whitney_z`).
        Others: see :class:`~lightning_memwatch.callbacks.machinery.monitor.MemwatchMonitor`.

    Example::

        >>> SampleMonitor(cells=3).logged_keys >= {"memwatch/samples/ct"}
        True
    """

    known_families = (FAMILY,)
    #: the reference has its own size; only the held-out probe is the probe
    tied_splits = ("val",)

    def __init__(
        self,
        sampler: str | None = None,
        decoder: str = "decoder",
        latent_dim: LatentSize | None = None,
        probe_size: int = 64,
        reference_size: int = 1024,
        num_generated: int = 512,
        cells: int = 4,
        every_n_epochs: int = 1,
        input_key: InputKey = 0,
        max_overhead: float = 0.05,
        seed: int = 0,
        features: str | None = None,
        pca_dim: int | None = None,
        tie_correction: bool = False,
    ) -> None:
        super().__init__(
            decoder, None, latent_dim, probe_size, every_n_epochs, input_key, max_overhead, seed
        )
        for name, value in (("sampler", sampler), ("features", features)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(
                    f"Expected `{name}` to name a module attribute or be None but got {value!r}"
                )
        check_int("reference_size", reference_size, minimum=2)
        check_int("num_generated", num_generated)
        check_int("cells", cells)
        if pca_dim is not None:
            check_int("pca_dim", pca_dim)
        self.sampler_name, self.features_name = sampler, features
        self.reference_size, self.num_generated = reference_size, num_generated
        self.cells, self.pca_dim = cells, pca_dim
        if not isinstance(tie_correction, bool):
            raise ValueError(
                f"Expected `tie_correction` to be True or False but got {tie_correction!r}"
            )
        self.metric = DataCopying(cells, tie_correction=tie_correction)
        self.projection: tuple[Tensor, Tensor] | None = None
        self.reference: Tensor | None = None

    @property
    def families(self) -> tuple[str, ...]:
        return self.known_families

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            sampler=self.sampler_name or self.decoder_argument,
            probe_size=self.probe_size,
            reference_size=self.reference_size,
            cells=self.cells,
            seed=self.seed,
        )

    @property
    def logged_keys(self) -> frozenset[str]:
        return frozenset(f"memwatch/{FAMILY}/{key}" for key in KEYS)

    # ----------------------------------------------------------------- configuration
    @property
    def uses_decoder(self) -> bool:
        return self.sampler_name is None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # the decoder and its latent size, if used
        if self.sampler_name is not None:
            self._attribute(pl_module, self.sampler_name, "sampler")
        if self.features_name is not None:
            self._attribute(pl_module, self.features_name, "features")

    def probe_requests(self) -> dict[str, tuple[str, int]]:
        """The training reference is the base's training probe, of ``reference_size``."""
        return {
            "train": ("reference_size", self.reference_size),
            "val": ("probe_size", self.probe_size),
        }

    def _prepare_probes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the reference and the held-out probe; check that samples and data compare."""
        super()._prepare_probes(trainer, pl_module)
        self.reference = self.inputs["train"]
        with measurement_context(pl_module, pl_module.device), torch.no_grad():
            device = pl_module.device
            sample = self.vectors(pl_module, self.generate(pl_module, 1))
            data = self.vectors(pl_module, self.reference[:1].to(device))
        if sample.shape[1] != data.shape[1]:
            raise ValueError(
                f"Expected the generated samples to compare with the data but they have "
                f"{sample.shape[1]} values per sample against the data's {data.shape[1]}: point "
                "`sampler=` / `decoder=` at the map to inputs, `input_key=` at the input of a "
                "sample, or `features=` at a feature extractor that takes both"
            )
        if self.pca_dim is not None and self.pca_dim > min(len(self.reference), data.shape[1]):
            raise ValueError(
                f"Expected `pca_dim` at most min(reference samples, values per sample) = "
                f"{min(len(self.reference), data.shape[1])} but got {self.pca_dim}"
            )

    # ------------------------------------------------------------------- measuring
    def generate(self, pl_module: pl.LightningModule, count: int) -> Tensor:
        """The first ``count`` of the monitor's generated samples (the same every epoch)."""
        device = pl_module.device
        if self.sampler_name is not None:
            sampler = self._attribute(pl_module, self.sampler_name, "sampler")
            samples = draw_samples(sampler, count, self.seed, device)
        else:
            generator = torch.Generator().manual_seed(self.seed + 1)
            z = torch.randn(self.num_generated, self.latent_dim, generator=generator)
            samples = self.decoder(pl_module)(z[:count].to(device, pl_module.dtype))
        if not isinstance(samples, Tensor) or samples.ndim == 0 or len(samples) != count:
            got = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
            raise ValueError(f"Expected the generator to return {count} samples but got {got}")
        return samples

    def vectors(self, pl_module: pl.LightningModule, x: Tensor) -> Tensor:
        """Samples or data as the flat vectors distances are taken between: through
        ``features``, then the PCA projection when there is one."""
        if self.features_name is not None:
            x = self._attribute(pl_module, self.features_name, "features")(x)
        return project(x, self.projection)

    def slice_inputs(self, rows: Tensor) -> dict[str, Tensor]:
        """The slice of the held-out probe; the training side is the whole reference."""
        return {"train": self.inputs["train"], "val": self.inputs["val"][rows]}

    def measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: dict[str, Tensor],
        rows: Tensor,
    ) -> dict[str, dict[str, Any]]:
        # C_T is a statistic of whole samples (cells), not of probe rows: it is taken over this
        # measurement's slice of the held-out probe and as many generated samples, not rolled
        size = len(inputs["val"])
        count = math.ceil(self.num_generated * size / self.effective_probe_size)
        rank, world = trainer.global_rank, trainer.world_size
        writer = tensorboard_writer(trainer)
        shown: list[Tensor] = []

        def samples() -> dict[str, Tensor]:
            with torch.no_grad():
                reference = self.reference.to(pl_module.device)
                generated = self.generate(pl_module, count)
                if self.pca_dim is not None and self.projection is None:
                    features = self.vectors(pl_module, reference)  # no projection yet
                    self.projection = pca_projection(features, self.pca_dim)
                train = self.vectors(pl_module, reference)
                batches = {
                    name: self.vectors(pl_module, shard(batch, rank, world))
                    for name, batch in (("heldout", inputs["val"]), ("generated", generated))
                }
                found = copy_measurements(train, batches, self.cells, self.seed)
                for name, (d, x_cells, flags) in found.items():
                    self.metric.update(d, x_cells, flags, name)
                if writer is not None:
                    x = shard(generated, rank, world)[:PAIRS]
                    nearest = nearest_neighbours(self.vectors(pl_module, x), train)[1]
                    shown.extend([x, reference[nearest.clamp(min=0)]])
            return self.metric.scalars()

        def write() -> None:
            self.write_layout_once(writer)
            x, nearest = shown
            if x[0].numel() != nearest[0].numel():  # samples unlike the data: nothing to show
                return
            images = as_images(torch.cat([x.reshape_as(nearest), nearest]))
            if images is not None:
                grid = pairs_grid(*images.chunk(2))  # 4 pairs a row: readable in a card
                writer.add_image(f"memwatch/{FAMILY}/nearest", grid, global_step(trainer))

        return {FAMILY: self.timed(FAMILY, size, samples, write if writer else None)}

    # ----------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["projection"] = (
            None if self.projection is None else [t.cpu() for t in self.projection]
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        projection = state_dict.get("projection")
        self.projection = None if projection is None else tuple(projection)
        self.reference = None
