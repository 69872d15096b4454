"""GeometryMonitor: the spectrum, density and complexity families on a fixed train and
validation probe."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_memwatch.callbacks.latents import LatentStore
from lightning_memwatch.callbacks.monitor import SPLITS, MemwatchMonitor
from lightning_memwatch.callbacks.probe_latents import ProbeLatents, nearest_train_neighbours
from lightning_memwatch.callbacks.probes import InputKey, shard
from lightning_memwatch.callbacks.spectra import spectral_head, spectrum_size
from lightning_memwatch.functional import decay_terms, dip_terms, local_complexity
from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.complexity import check_radius, piecewise_linear_activations
from lightning_memwatch.functional.density import check_radii
from lightning_memwatch.functional.priors import Prior, check_prior, sample_prior
from lightning_memwatch.functional.profiles import line_profile, path_profile
from lightning_memwatch.metrics import ComplexityGap, DensityGap, SpectrumGap
from lightning_memwatch.viz import global_step, tensorboard_writer
from lightning_memwatch.viz.geometry import write_geometry

FAMILIES = ("spectrum", "density", "complexity")
#: Measured unless ``families`` says otherwise: complexity needs a piecewise-linear decoder.
DEFAULT_FAMILIES = ("spectrum", "density")
#: Offset of the seed of the complexity family's ball samples (fixed across epochs).
COMPLEXITY_SEED_OFFSET = 104729


class GeometryMonitor(ProbeLatents, MemwatchMonitor):
    """Watch the decoder's local geometry at the probes: spectrum (psi, nu, intrinsic dimension,
    log condition), density (dip, decay) and, opt-in, local complexity, train against validation.

    Logs (DESIGN §3), each descriptor with ``/{train,val,gap,ks_pvalue}``:
    ``memwatch/spectrum/{log_volume,local_rank,intrinsic_dim,log_condition}``,
    ``memwatch/density/{dip,decay}``, their two parts
    ``memwatch/density/{dip,decay}/{prior,volume}`` (``log p`` and ``-psi``: on a large latent
    the dip's prior part ``-|z_0 - z_1|^2 / 4`` can be most of it, so read which one moves),
    ``memwatch/density/decay/unreached`` (share of lines that never reach a radius: flat
    regions), ``memwatch/complexity`` (no descriptor level:
    ``memwatch/complexity/{train,val,gap,ks_pvalue}``); per family
    ``memwatch/<family>/{seconds,probe_size,nonfinite}``; and
    ``memwatch/spectrum/<descriptor>/prior``, the mean at latents drawn from the prior, where
    the decoder is sampled. Sources:
    ``papers/feiszli_latent_geometry.txt`` (spectrum, dip, decay),
    ``papers/humayun_local_geometry.txt`` (psi, nu; complexity §2),
    ``papers/ramirez_geometry_poster.txt`` (log condition).

    The latents of the probe are the encoder's, or recovered by latent optimisation and moved into
    the prior's typical set when there is no encoder
    (:mod:`~lightning_memwatch.callbacks.probe_latents`). The spectrum pass gives the dip starts'
    and the decay centres' spectra and top singular vectors, so a dip path needs one new Jacobian
    (at its arclength midpoint; its end's, when the end is not in the slice) and a decay line
    none at its centre. Dip paths join each probe point (train and validation alike) to its nearest
    neighbour in the train probe; decay lines run through each probe point. Complexity counts
    the activation boundaries of a piecewise-linear decoder inside the l1 ball of radius
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
        radii: output-space arclength radii of the decay score (feiszli §5.3 uses 0.5 and 1 for
            MNIST in ``[-1, 1]``); choose them below the typical distance between training
            samples, else most lines never reach them and the decay is NaN (counted in
            ``nonfinite``).
        complexity_radius: l1 radius ``r`` of the complexity balls, in latent units. The paper
            uses ``1e-4`` for Stable Diffusion's VQGAN decoder (humayun §3), whose millions of
            neurons cut even a tiny ball; a small decoder has no boundary there
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
            else exact (:mod:`~lightning_memwatch.callbacks.spectra`). The density's other
            Jacobians stay exact.
        prior: the latent prior ``p(z)`` of the density's ``log p(z)``, of the prior draws and of
            the typical set recovered latents are moved into: ``"normal"`` (``N(0, I)``, VAEs,
            most GANs), ``"sphere"`` (uniform on the unit sphere, GLO), or a
            ``torch.distributions.Distribution`` (from Python; no typical-set projection).
        Others: see :class:`~lightning_memwatch.callbacks.monitor.MemwatchMonitor`.
    """

    known_families = FAMILIES

    def __init__(
        self,
        decoder: str = "decoder",
        encoder: str | None = None,
        latent_dim: int | None = None,
        probe_size: int = 64,
        every_n_epochs: int = 1,
        families: Sequence[str] = DEFAULT_FAMILIES,
        rtol: float = 1e-4,
        input_key: InputKey = 0,
        max_overhead: float = 0.05,
        seed: int = 0,
        radii: Sequence[float] = (0.5, 1.0),
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
        self.rtol = float(rtol)
        self.radii = tuple(check_radii(radii).tolist())
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
                for s in (*SPLITS, "gap", "ks_pvalue")
            }
            keys |= {
                f"memwatch/{family}/{k}"
                for k in ("seconds", "probe_size", "nonfinite", "staleness")
            }
        if "spectrum" in self._families:
            keys |= {f"memwatch/spectrum/{d}/prior" for d in self.spectrum_metric.descriptors}
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

    def measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: dict[str, Tensor],
        rows: Tensor,
    ) -> dict[str, dict[str, Any]]:
        decoder = self.decoder(pl_module)
        size = len(inputs["train"])
        rank, world = trainer.global_rank, trainer.world_size
        mine = shard(rows, rank, world)
        cache: dict[str, Tensor] = {}
        heads: dict[str, Tensor] = {}  # per split: the spectrum pass's (s, v_1) of this rank
        figures = self.figures_due

        def latents(split: str) -> Tensor:
            if split not in cache:
                cache[split] = self.probe_latents(trainer, pl_module, inputs[split], split, rows)
            return cache[split]

        writer = tensorboard_writer(trainer)
        artifacts: dict[str, Any] = {
            "log_s": {},
            "dip": {},
            "decay": {},
            "paths": {},
            "lines": {},
            "complexity": {},
        }

        def spectrum() -> dict[str, Tensor]:
            for split in SPLITS:
                z = shard(latents(split), rank, world)
                if len(z):  # a rank without a sample of its own still takes part in the sync
                    heads[split] = head_of(z)
                    s = heads[split][:, : -z.shape[1]]
                    self.spectrum_metric.update(s, split)
                    artifacts["log_s"][split] = s.log()
            # the same descriptors where the decoder is sampled, the draws seeded per epoch
            generator = torch.Generator().manual_seed(
                self.seed + 7919 * (trainer.current_epoch + 1)
            )
            prior = sample_prior(self.prior, size, self.latent_dim, generator=generator)
            # every rank the whole draw (the metric does not sync), so no rank is ever empty
            self.prior_metric.update(spectrum_of(prior.to(inputs["train"])), "train")
            prior_means = {
                key.replace("/train", "/prior"): value
                for key, value in self.prior_metric.compute().items()
                if key.endswith("/train")
            }
            self.prior_metric.reset()
            return {**self.rolled(trainer, "spectrum", self.spectrum_metric, mine), **prior_means}

        # the decoder's outputs have as many values as an input (checked at train start)
        k = self.spectrum_size(self.latent_dim, inputs["train"][0].numel())

        def head_of(z: Tensor) -> Tensor:
            return spectral_head(decoder, z, k)

        def spectrum_of(z: Tensor) -> Tensor:
            return head_of(z)[:, : -z.shape[1]]

        def density() -> dict[str, Tensor]:
            pool = self.inputs["train"].to(inputs["train"].device)
            for split in SPLITS:
                x, z = shard(inputs[split], rank, world), shard(latents(split), rank, world)
                if not len(z):
                    continue
                query = shard(rows, rank, world) if split == "train" else None
                neighbours = nearest_train_neighbours(x, pool, query)
                ends = self.neighbour_latents(trainer, pl_module, neighbours)
                head = heads.get(split)
                s_start = None if head is None else head[:, : -z.shape[1]]
                dip = dip_terms(decoder, z, ends, rtol=self.rtol, prior=self.prior, s_start=s_start)
                decay = decay_terms(
                    decoder, z, radii=self.radii, rtol=self.rtol, prior=self.prior, head=head
                )
                self.density_metric.update(
                    split,
                    dip=dip.prior + dip.volume,
                    decay=decay.prior + decay.volume,
                    dip_terms=(dip.prior, dip.volume),
                    decay_terms=(decay.prior, decay.volume, decay.unreached),
                )
                if writer is not None:
                    artifacts["dip"][split] = dip.prior + dip.volume
                    artifacts["decay"][split] = decay.prior + decay.volume
                    if figures:
                        arc, lp, points = path_profile(
                            decoder, z[0], ends[0], rtol=self.rtol, prior=self.prior
                        )
                        artifacts["paths"][split] = (arc, lp)
                        artifacts["lines"][split] = line_profile(
                            decoder, z[0], rtol=self.rtol, prior=self.prior
                        )
                        if split == "train":
                            with torch.no_grad():
                                artifacts["path_outputs"] = decoder(points)
            return self.rolled(trainer, "density", self.density_metric, mine)

        def complexity() -> dict[str, Tensor]:
            # Every rank counts the whole slice (a few forward passes) with the same seeded
            # draws, then records its shard: the gathered result is the single-process one.
            generator = torch.Generator().manual_seed(self.seed + COMPLEXITY_SEED_OFFSET)
            for split in SPLITS:
                counts = local_complexity(
                    decoder,
                    latents(split),
                    radius=self.complexity_radius,
                    num_samples=self.complexity_samples,
                    generator=generator,
                )
                self.complexity_metric.update(shard(counts, rank, world), split)
                artifacts["complexity"][split] = counts
            return self.rolled(trainer, "complexity", self.complexity_metric, mine)

        steps: dict[str, Callable[[], dict[str, Tensor]]] = {
            "spectrum": spectrum,
            "density": density,
            "complexity": complexity,
        }
        step = global_step(trainer)
        if writer is not None:
            self.write_layout_once(writer)
        return {
            family: self.timed(
                family,
                size,
                steps[family],
                None
                if writer is None
                else lambda f=family: write_geometry(writer, step, f, artifacts, figures),
            )
            for family in self._families
        }

    def spectrum_size(self, m: int, n: int) -> int | None:
        """How many singular values the spectrum pass computes: ``None`` for all (exact)."""
        return spectrum_size(self.top_k, m, n)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "latents": self.latent_store.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "latents" in state_dict:
            self.latent_store.load_state_dict(state_dict["latents"])
