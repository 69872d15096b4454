"""DiffusionMonitor: whether a diffusion model starts to memorize its training data, from its own
denoising loss, the spectrum of its x0-estimate and the copies among its samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_memwatch.callbacks.machinery.costs import UnitCosts, Work
from lightning_memwatch.callbacks.machinery.diffusion_checks import check_denoiser
from lightning_memwatch.callbacks.machinery.diffusion_costs import diffusion_work, time_denoiser
from lightning_memwatch.callbacks.machinery.diffusion_measure import logged_keys, measure_diffusion
from lightning_memwatch.callbacks.machinery.diffusion_model import (
    DenoiserCall,
    check_data_range,
    check_labels,
    check_prediction,
    data_scaling,
    family_names,
    model_prediction,
    read_schedule,
)
from lightning_memwatch.callbacks.machinery.diffusion_probes import (
    SPECTRUM_STREAM,
    check_timesteps,
    gather_labels,
    resolve_timesteps,
    timestep_name,
    training_reference,
)
from lightning_memwatch.callbacks.machinery.monitor import MemwatchMonitor
from lightning_memwatch.callbacks.machinery.probes import InputKey
from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.denoiser_spectrum import random_orthonormal
from lightning_memwatch.metrics.diffusion import (
    DenoiserSpectrumGap,
    DenoisingLossGap,
    SampleCopying,
)

FAMILIES = ("loss", "spectrum", "samples")
DEFAULT_FAMILIES = ("loss",)
#: The loss grid of ``timesteps="auto"``: fractions of the training timesteps.
#: Measured (``examples/ddpm_memorization.py``, seed 0): on the memorizing run the gap opens at
#: every timestep from 10 to 100 of 1,000 together, at 500 and 700 not at all (a sample's loss
#: there is mostly its noise draw); three timesteps keep a whole-probe measurement at 0.07-0.09 of a
#: training epoch of the example (four: 0.10; ``benchmarks/diffusion_cost.py``).
DEFAULT_TIMESTEPS = (0.025, 0.05, 0.1)
#: The spectrum timesteps of ``spectrum_timesteps="auto"``.
DEFAULT_SPECTRUM_TIMESTEPS = (0.02,)
#: ``spectrum_dim="auto"``: the whole Jacobian up to this many values per sample, else a fixed
#: random projection on :data:`PROJECTION_DIM` dimensions (Humayun et al. (2024), sec. 3: 120).
EXACT_UP_TO, PROJECTION_DIM = 256, 120


class DiffusionMonitor(MemwatchMonitor):
    """Watch a diffusion model's denoiser on a fixed train and validation probe.

    Families (``families``, keys under ``memwatch/diffusion/<family>/``):

    - ``loss`` (default): the per-sample denoising loss of each probe sample at a fixed grid of
      timesteps, in the model's own parametrization
      (:func:`~lightning_memwatch.functional.diffusion.denoising_losses`), with noise fixed per
      probe sample and timestep for the whole run (and across resumes). Logs the mean over the
      grid as ``train``, ``val``, ``gap`` (train - val), ``relative_gap`` ((val - train) / val),
      ``ks_pvalue``, ``effect`` (Cliff's delta of train against val, ``-1``: every training
      sample is denoised better than every held-out one) with ``effect_lower`` /
      ``effect_upper`` (one-sided 95 % DeLong bounds), and ``t<timestep>/{train,val,gap,effect}``
      per grid timestep: which noise levels open first. A memorizing denoiser denoises its
      training samples better than held-out ones (Ho et al. 2020, arXiv:2006.11239, eq. 14 is
      the loss it minimizes); forward passes only.
    - ``spectrum``: psi, local rank, intrinsic dimension and log condition
      (``<descriptor>/{train,val,gap,ks_pvalue,effect,effect_lower,effect_upper}``) of the
      Jacobian of the x0-estimate at probe samples noised to ``spectrum_timesteps``, averaged
      over them (Humayun et al. (2024), sec. 3; Kadkhodaie et al. 2024, arXiv:2310.02557: a
      memorizing denoiser's Jacobian collapses its rank;
      :mod:`~lightning_memwatch.functional.denoiser_spectrum`). Forward-mode AD through the
      denoiser, attention included; reverse mode for an op without a forward-mode rule.
    - ``samples``: ``num_generated`` samples of a built-in deterministic DDIM
      (:func:`~lightning_memwatch.functional.ddim.ddim_sample`, ``sampler_steps`` steps,
      "trailing" spacing, starting noise seeded by ``seed``: the same samples every epoch) against
      a training reference of ``reference_size`` samples, in the model's space (latents for a
      latent diffusion model): Meehan et al.'s ``ct``, ``copy_fraction``,
      ``heldout_copy_fraction`` (:class:`~lightning_memwatch.callbacks.SampleMonitor`) and
      ``near_copy_share``, the share with ``d_1 / d_2 < 1/3`` (nearest over second-nearest
      training sample; :mod:`~lightning_memwatch.functional.copies`), beside
      ``heldout_near_copy_share``, the held-out probe's.

    Each family logs ``seconds`` and ``probe_size``; ``loss`` and ``spectrum`` also
    ``nonfinite`` and ``staleness`` (the rolling probe of
    :class:`~lightning_memwatch.callbacks.machinery.monitor.MemwatchMonitor`). The families are
    ``"diffusion/loss"``, ``"diffusion/spectrum"``, ``"diffusion/samples"`` for
    :class:`~lightning_memwatch.callbacks.rules.EffectAgreement`
    (``families=(("diffusion/loss", "loss", -1), ...)``).

    Args:
        denoiser: name of the module attribute called as ``denoiser(x_t, t)`` (``t`` a ``(B,)``
            long tensor), returning the prediction or an object holding it (``.sample``).
        schedule: name of an object with ``alphas_cumprod`` (diffusers' ``DDPMScheduler``,
            denoising_diffusion_pytorch's ``GaussianDiffusion``) or of that tensor.
        prediction: ``"epsilon"``, ``"sample"``, ``"v_prediction"`` (or ``"pred_noise"``,
            ``"pred_x0"``, ``"pred_v"``); ``"auto"``: the schedule's ``config.prediction_type``
            or ``objective``, else setup fails and asks for it.
        families: a subset of ``("loss", "spectrum", "samples")``.
        timesteps: the loss grid: integer timesteps or fractions of the ``T`` training timesteps
            (``round(f T)``); ``"auto"``: :data:`DEFAULT_TIMESTEPS`. Keys name them as given.
        data_range: how probe inputs are brought to the model's scale before noising:
            ``(low, high)`` maps ``[low, high]`` to ``[-1, 1]``; ``None`` takes them as they are;
            ``"auto"`` reads denoising_diffusion_pytorch's ``normalize`` from the schedule
            object, else takes them as they are. Train start says which (once, at info level).
        label_key: for a class-conditional denoiser, the tuple index or dict key of a sample's
            class label: each probe sample is measured with its own label, generated samples
            with the training probe's labels in turn. ``None``: unconditional.
        label_argument: the keyword the denoiser takes the labels by (diffusers:
            ``class_labels``).
        denoiser_output: the key / attribute of the denoiser's output that is the prediction.
        spectrum_timesteps: timesteps of the spectrum, as ``timesteps``; ``"auto"``:
            :data:`DEFAULT_SPECTRUM_TIMESTEPS`.
        spectrum_dim: ``None``: the whole ``D x D`` Jacobian; ``k``: its restriction to a fixed
            random ``k``-dimensional subspace (seeded); ``"auto"``: whole up to
            :data:`EXACT_UP_TO` values per sample, else :data:`PROJECTION_DIM`.
        rtol: relative threshold of the non-degenerate singular values.
        sampler_steps: DDIM steps of the samples family.
        num_generated: generated samples (at the whole probe; a slice of ``s`` held-out samples
            generates ``ceil(num_generated s / probe_size)``).
        reference_size: training samples the generated ones are compared with (all of them when
            the training set is smaller); drawn once, seeded, kept in the checkpoint.
        cells: k-means cells of ``C_T`` (Meehan et al. (2020), sec. 3).
        Others: see :class:`~lightning_memwatch.callbacks.machinery.monitor.MemwatchMonitor`;
        ``preprocess`` may encode images into a latent diffusion model's latents.

    Example::

        >>> DiffusionMonitor(families=("loss", "samples")).families
        ('diffusion/loss', 'diffusion/samples')
        >>> "memwatch/diffusion/loss/t0.05/gap" in DiffusionMonitor().logged_keys
        True
    """

    known_families = tuple(f"diffusion/{f}" for f in FAMILIES)
    loss_family, spectrum_family, samples_family = known_families

    def __init__(
        self,
        denoiser: str = "unet",
        schedule: str = "noise_scheduler",
        prediction: str = "auto",
        probe_size: int = 64,
        every_n_epochs: int = 1,
        families: Sequence[str] = DEFAULT_FAMILIES,
        timesteps: Sequence[int | float] | str = "auto",
        input_key: InputKey = 0,
        max_overhead: float = 0.05,
        seed: int = 0,
        *,
        preprocess: str | None = None,
        data_range: str | Sequence[float] | None = "auto",
        label_key: InputKey = None,
        label_argument: str = "class_labels",
        denoiser_output: str | None = None,
        spectrum_timesteps: Sequence[int | float] | str = "auto",
        spectrum_dim: int | str | None = "auto",
        rtol: float = 1e-4,
        sampler_steps: int = 10,
        num_generated: int = 256,
        reference_size: int = 1024,
        cells: int = 4,
    ) -> None:
        super().__init__(
            denoiser,
            None,
            None,
            probe_size,
            every_n_epochs,
            input_key,
            max_overhead,
            seed,
            preprocess=preprocess,
        )
        self.schedule_name = schedule
        if not isinstance(schedule, str) or not schedule:
            raise ValueError(f"Expected `schedule` to name a module attribute but got {schedule!r}")
        self.prediction = check_prediction(prediction)
        self._families = family_names(families, FAMILIES)
        self.timesteps = check_timesteps(
            "timesteps", DEFAULT_TIMESTEPS if timesteps == "auto" else timesteps
        )
        self.spectrum_timesteps = check_timesteps(
            "spectrum_timesteps",
            DEFAULT_SPECTRUM_TIMESTEPS if spectrum_timesteps == "auto" else spectrum_timesteps,
        )
        self.data_range = check_data_range(data_range)
        check_labels(label_key, label_argument)
        self.label_key, self.label_argument = label_key, label_argument
        self.denoiser_output = denoiser_output
        if spectrum_dim not in (None, "auto"):
            check_int("spectrum_dim", spectrum_dim)
        self.spectrum_dim = spectrum_dim
        self.sampler_steps = check_int("sampler_steps", sampler_steps)
        self.num_generated = check_int("num_generated", num_generated)
        self.reference_size = check_int("reference_size", reference_size, minimum=2)
        self.cells = check_int("cells", cells)
        names = [timestep_name(t) for t in self.timesteps]
        self.loss_metric = DenoisingLossGap(names)
        self.spectrum_metric = DenoiserSpectrumGap(rtol=rtol)
        self.samples_metric = SampleCopying(cells)
        self.labels: dict[str, Tensor] | None = None
        self.reference: Tensor | None = None
        self.reference_index: Tensor | None = None
        self.projection: Tensor | None = None

    # ----------------------------------------------------------------- configuration
    @property
    def families(self) -> tuple[str, ...]:
        return tuple(f"diffusion/{f}" for f in self._families)

    @property
    def uses_gradients(self) -> bool:
        """No family differentiates the denoiser in reverse mode."""
        return False

    def work(self, family: str, size: int) -> Work:
        return diffusion_work(self, family, size)

    def unit_costs(self, pl_module: pl.LightningModule) -> UnitCosts:
        return time_denoiser(self, pl_module)

    @property
    def uses_decoder(self) -> bool:
        """The denoiser is checked by this monitor's own setup, not as a decoder of latents."""
        return False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            denoiser=self.decoder_name,
            probe_size=self.probe_size,
            seed=self.seed,
            families=self._families,
        )

    @property
    def logged_keys(self) -> frozenset[str]:
        return logged_keys(self)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Read the schedule, the prediction type and the denoiser (errors name the fix)."""
        super().setup(trainer, pl_module, stage)
        self.schedule = read_schedule(pl_module, self.schedule_name)
        self.prediction_type = model_prediction(self.prediction, self.schedule, self.schedule_name)
        steps = len(self.schedule.alphas_cumprod)
        self.loss_grid = resolve_timesteps("timesteps", self.timesteps, steps)
        self.spectrum_grid = resolve_timesteps("spectrum_timesteps", self.spectrum_timesteps, steps)
        if self.sampler_steps > steps:
            raise ValueError(
                f"Expected DiffusionMonitor's `sampler_steps` at most the schedule's {steps} "
                f"training timesteps but got {self.sampler_steps}"
            )
        fn = self._attribute(pl_module, self.decoder_name, "denoiser")
        self.call = DenoiserCall(fn, self.decoder_name, self.denoiser_output, self.label_argument)

    def _prepare_probes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the probes, bring them to the model's scale, gather their labels and the
        training reference, fix the projection, and run the denoiser once as measured."""
        super()._prepare_probes(trainer, pl_module)
        scale, how = data_scaling(self.data_range, self.schedule)
        if scale is not None:
            self.inputs = {split: scale(x) for split, x in self.inputs.items()}
        x = self.inputs["train"]
        rank_zero_info(
            f"DiffusionMonitor: probe inputs taken {how} (values {x.min().item():.3g} to "
            f"{x.max().item():.3g}); pass `data_range=` if training rescales them otherwise"
        )
        if self.label_key is not None:
            self.labels = gather_labels(trainer, pl_module, self.indices, self.label_key, self.seed)
        if self.samples_family in self.families:
            self.reference_index, reference = training_reference(self, trainer, pl_module, x.dtype)
            self.reference = reference if scale is None else scale(reference)
        dim = x[0].numel()
        k = self.spectrum_dim
        if k == "auto":
            k = None if dim <= EXACT_UP_TO else PROJECTION_DIM
        if k is not None and k < dim:
            generator = torch.Generator().manual_seed(self.seed * 8 + SPECTRUM_STREAM)
            self.projection = random_orthonormal(dim, k, generator)
        check_denoiser(self, pl_module)

    def measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: dict[str, Tensor],
        rows: Tensor,
    ) -> dict[str, dict[str, Any]]:
        return measure_diffusion(self, trainer, pl_module, inputs, rows)

    # ----------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["reference_index"] = self.reference_index
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.reference_index = state_dict.get("reference_index")
        self.reference = None
        self.labels = None
