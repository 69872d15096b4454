"""GeometryMonitor: the spectrum, density and complexity families on a fixed train and
validation probe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from lightning_memwatch.callbacks.machinery.costs import Work
from lightning_memwatch.callbacks.machinery.geometry_measure import (  # noqa: F401 (the offset is public)
    COMPLEXITY_SEED_OFFSET,
    geometry_work,
    measure_geometry,
)
from lightning_memwatch.callbacks.machinery.latent_views import LatentSize
from lightning_memwatch.callbacks.machinery.latents import LatentStore
from lightning_memwatch.callbacks.machinery.monitor import MemwatchMonitor
from lightning_memwatch.callbacks.machinery.probe_latents import ProbeLatents
from lightning_memwatch.callbacks.machinery.probes import InputKey
from lightning_memwatch.callbacks.machinery.spectra import spectrum_size
from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.complexity import check_radius, piecewise_linear_activations
from lightning_memwatch.functional.decay import AUTO_RADII_FRACTIONS, nearest_neighbour_radii
from lightning_memwatch.functional.density import check_radii
from lightning_memwatch.functional.priors import Prior, check_prior
from lightning_memwatch.metrics import ComplexityGap, DensityGap, SpectrumGap

FAMILIES = ("spectrum", "density", "complexity")
#: Measured unless ``families`` says otherwise: complexity needs a piecewise-linear decoder.
DEFAULT_FAMILIES = ("spectrum", "density")


class GeometryMonitor(ProbeLatents, MemwatchMonitor):
    """Watch the decoder's local geometry at the probes: spectrum (psi, nu, intrinsic dimension,
    log condition), density (dip, decay) and, opt-in, local complexity, train against validation.

    Logs, each descriptor with ``/{train,val,gap,ks_pvalue}``:
    ``memwatch/spectrum/{log_volume,local_rank,intrinsic_dim,log_condition}``,
    ``memwatch/density/{dip,decay}``, their two parts
    ``memwatch/density/{dip,decay}/{prior,volume}`` (``log p`` and ``-psi``: on a large latent
    the dip's prior part ``-|z_0 - z_1|^2 / 4`` can be most of it, so read which one moves),
    ``memwatch/density/decay/unreached`` (share of lines that never reach a radius: flat
    regions), ``memwatch/density/radius_{0,1,...}`` (the decay radii used, constant over a
    run), ``memwatch/complexity`` (no descriptor level:
    ``memwatch/complexity/{train,val,gap,ks_pvalue}``); per family
    ``memwatch/<family>/{seconds,probe_size,nonfinite}``; and
    ``memwatch/spectrum/<descriptor>/prior``, the mean at latents drawn from the prior, where
    the decoder is sampled. Sources: Feiszli (2017) for the spectrum, dip and decay, Humayun et al.
    (2024) for psi, nu and complexity (sec. 2), Ramirez et al. (poster) for the log condition.

    The latents of the probe are the encoder's, or recovered by latent optimisation and moved into
    the prior's typical set when there is no encoder
    (:mod:`~lightning_memwatch.callbacks.machinery.probe_latents`). The spectrum pass gives the dip
    starts' and the decay centres' spectra and top singular vectors, so a dip path needs one new
    Jacobian (at its arclength midpoint; its end's, when the end is not in the slice) and a decay
    line none at its centre. Dip paths join each probe point (train and validation alike) to its
    nearest neighbour in the train probe; decay lines run through each probe point. Complexity
    counts the activation boundaries of a piecewise-linear decoder inside the l1 ball of radius
    ``complexity_radius`` around each probe latent
    (:func:`~lightning_memwatch.functional.local_complexity`); its random ball points are seeded
    by ``seed`` alone, the same every epoch, so the curve moves with the decoder, not the draws.

    Args:
        families: which families to measure, a subset of ``("spectrum", "density",
            "complexity")``; default ``("spectrum", "density")``. ``"complexity"`` needs a decoder
            with ReLU / LeakyReLU / PReLU / Hardtanh (ReLU6) activation modules (checked at
            setup); a decoder that is a method of the LightningModule has the module's
            activations hooked, and only those the method runs count.
        rtol: relative threshold of the non-degenerate singular values.
        radii: output-space arclength radii of the decay score (Feiszli (2017), sec. 5.3 uses 0.5
            and 1 for MNIST in ``[-1, 1]``); choose them below the typical distance between training
            samples, else most lines never reach them and the decay is NaN (counted in
            ``nonfinite``). ``"auto"``: ``0.25`` and ``0.5`` times the median distance from a
            train probe sample to its nearest other train probe sample (L2 on the flattened
            inputs, the decoder's output space;
            :func:`~lightning_memwatch.functional.decay.nearest_neighbour_radii`), fixed when the
            probe is first drawn (rank 0's value on every rank), kept in the checkpoint (a
            resumed run keeps them) and logged as ``memwatch/density/radius_{0,1}``. The
            default: on the detection benchmark it gave the paper's radii on 8 x 8 digits
            (0.46 / 0.92 against 0.5 / 1) and, on 28 x 28 digits, a decay gap that separates
            memorizing from generalizing runs where the fixed radii did not.
        complexity_radius: l1 radius ``r`` of the complexity balls, in latent units. The paper
            uses ``1e-4`` for Stable Diffusion's VQGAN decoder (Humayun et al. (2024), sec. 3),
            whose millions of neurons cut even a tiny ball; a small decoder has no boundary there
            (measured: 0 everywhere for a 32-unit ReLU decoder on digits). ``0.1``, a tenth of a
            N(0, I) prior's standard deviation and below the typical distance between probe
            latents, cuts a few boundaries per point on such a decoder without saturating
            (measured: about 3 to 5 of 32 neurons on average over 0-20 epochs, never all).
        complexity_samples: random points per ball besides its ``2 m`` vertices.
        top_k: ``None``: the exact spectrum (every singular value); an integer ``k``: the ``k``
            largest, by randomized block Krylov through forward- and reverse-mode products
            (:func:`~lightning_memwatch.functional.top_singular_values`); psi, nu, the intrinsic
            dimension and the log condition are then over the top ``k`` (compare runs with the
            same ``top_k`` only); ``"auto"`` (default): ``32`` from a latent size of 512 on,
            else exact (:mod:`~lightning_memwatch.callbacks.machinery.spectra`). The density family
            then takes the top ``k`` too: the dip's and decay's spectra and the decay's top
            right-singular vector come from the same operator
            (:func:`~lightning_memwatch.functional.dip_scores` ``top_k``), and their ``psi``
            (volume parts) is over the top ``k`` values: other numbers than the exact ones,
            which may differ in sign (measured on a random tanh MLP at m = 128: exact decay
            +0.04 to +0.18, top-32 -0.24 to -0.53), so read the train-val gap, not the sign;
            the path and line figures stay exact.
        prior: the latent prior ``p(z)`` of the density's ``log p(z)``, of the prior draws and of
            the typical set recovered latents are moved into: ``"normal"`` (``N(0, I)``, VAEs,
            most GANs), ``"sphere"`` (uniform on the unit sphere, GLO), or a
            ``torch.distributions.Distribution`` (from Python; no typical-set projection).
        Others: see :class:`~lightning_memwatch.callbacks.machinery.monitor.MemwatchMonitor`.
    """

    known_families = FAMILIES

    def __init__(
        self,
        decoder: str = "decoder",
        encoder: str | None = None,
        latent_dim: LatentSize | None = None,
        probe_size: int = 64,
        every_n_epochs: int = 1,
        families: Sequence[str] = DEFAULT_FAMILIES,
        rtol: float = 1e-4,
        input_key: InputKey = 0,
        max_overhead: float = 0.05,
        seed: int = 0,
        radii: Sequence[float] | str = "auto",
        complexity_radius: float = 0.1,
        complexity_samples: int = 64,
        *,
        prior: Prior = "normal",
        top_k: int | str | None = "auto",
        decoder_output: str | None = None,
        encoder_output: str | None = None,
        preprocess: str | None = None,
    ) -> None:
        super().__init__(
            decoder,
            encoder,
            latent_dim,
            probe_size,
            every_n_epochs,
            input_key,
            max_overhead,
            seed,
            decoder_output=decoder_output,
            encoder_output=encoder_output,
            preprocess=preprocess,
        )
        if isinstance(families, str) or not families or any(f not in FAMILIES for f in families):
            raise ValueError(
                f"Expected `families` to be a non-empty subset of {FAMILIES} but got {families!r}"
            )
        self._families = tuple(f for f in FAMILIES if f in families)
        self.spectrum_metric = SpectrumGap(rtol=rtol)
        self.prior_metric = SpectrumGap(rtol=rtol, sync_on_compute=False)
        self.density_metric = DensityGap()
        self.complexity_metric = ComplexityGap()
        # Cliff's delta and its bounds beside every gap (the rank effect the detection rule
        # reads); not on the prior draws, which have no validation split
        for metric in (self.spectrum_metric, self.density_metric, self.complexity_metric):
            metric.effects = True
        self.rtol = float(rtol)
        #: the decay radii; ``None`` until ``radii="auto"`` fixes them from the train probe
        self.radii: tuple[float, ...] | None = None
        self.auto_radii = isinstance(radii, str) and radii == "auto"
        if not self.auto_radii:
            try:
                self.radii = tuple(check_radii(radii).tolist())
            except ValueError:
                raise ValueError(
                    "Expected `radii` to be a non-empty sequence of positive numbers or 'auto' "
                    f"but got {radii!r}"
                ) from None
        self.complexity_radius = check_radius(complexity_radius, "complexity_radius")
        self.complexity_samples = check_int("complexity_samples", complexity_samples, minimum=0)
        self.latent_store = LatentStore(probe_size)
        self.prior = check_prior(prior)
        if top_k not in (None, "auto"):
            check_int("top_k", top_k)
        self.top_k = top_k

    @property
    def families(self) -> tuple[str, ...]:
        return self._families

    @property
    def state_key(self) -> str:
        """The base key, plus the families when they are not the default ones, so that two
        monitors measuring different families on the same probe can share a Trainer."""
        if self._families == DEFAULT_FAMILIES:
            return super().state_key
        return self._generate_state_key(
            decoder=self.decoder_name,
            probe_size=self.probe_size,
            seed=self.seed,
            families=self._families,
        )

    @property
    def logged_keys(self) -> frozenset[str]:
        keys = set()
        for family, metric in (
            ("spectrum", self.spectrum_metric),
            ("density", self.density_metric),
            ("complexity", self.complexity_metric),
        ):
            if family not in self._families:
                continue
            keys |= {
                f"memwatch/{family}/{metric.key(d, s)}"
                for d in metric.descriptors
                for s in metric.stats
            }
            keys |= {
                f"memwatch/{family}/{k}"
                for k in ("seconds", "probe_size", "nonfinite", "staleness")
            }
        if "spectrum" in self._families:
            keys |= {f"memwatch/spectrum/{d}/prior" for d in self.spectrum_metric.descriptors}
        if "density" in self._families:
            count = len(AUTO_RADII_FRACTIONS) if self.radii is None else len(self.radii)
            keys |= {f"memwatch/density/radius_{i}" for i in range(count)}
        return frozenset(keys)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if "complexity" in self._families:
            try:
                piecewise_linear_activations(self.decoder(pl_module))
            except ValueError as error:
                raise ValueError(
                    f"GeometryMonitor(families={self._families!r}) measures local complexity, "
                    f"which needs a piecewise-linear decoder `{self.decoder_name}`: {error}. Or "
                    "leave 'complexity' out of `families`"
                ) from None

    def _prepare_probes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the probes; with ``radii="auto"`` (and none kept from a checkpoint) fix the decay
        radii from the train probe, on rank 0, and hand them to every rank."""
        super()._prepare_probes(trainer, pl_module)
        if self.radii is None:
            radii = (
                nearest_neighbour_radii(self.inputs["train"]) if trainer.global_rank == 0 else None
            )
            self.radii = tuple(trainer.strategy.broadcast(radii, src=0))

    def measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: dict[str, Tensor],
        rows: Tensor,
    ) -> dict[str, dict[str, Any]]:
        return measure_geometry(self, trainer, pl_module, inputs, rows)

    def work(self, family: str, size: int) -> Work | None:
        """Decoder work of ``family`` on ``size`` samples per split
        (:func:`~lightning_memwatch.callbacks.machinery.geometry_measure.geometry_work`)."""
        return geometry_work(self, family, size)

    def spectrum_size(self, m: int, n: int) -> int | None:
        """How many singular values the spectrum pass computes: ``None`` for all (exact)."""
        return spectrum_size(self.top_k, m, n)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "latents": self.latent_store.state_dict(),
            "radii": self.radii,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "latents" in state_dict:
            self.latent_store.load_state_dict(state_dict["latents"])
        if self.auto_radii and state_dict.get("radii") is not None:
            self.radii = tuple(float(r) for r in state_dict["radii"])
