"""LikelihoodMonitor: importance-sampled log p(x) on a fixed train and validation probe."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_memwatch.callbacks.machinery.costs import OTHER_FAMILY_OPS, Work
from lightning_memwatch.callbacks.machinery.latent_views import LatentSize
from lightning_memwatch.callbacks.machinery.likelihood_checks import (
    BERNOULLI,
    check_posterior,
    check_unit_inputs,
    resolve_likelihood,
)
from lightning_memwatch.callbacks.machinery.monitor import SPLITS, MemwatchMonitor
from lightning_memwatch.callbacks.machinery.probes import InputKey, shard
from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.decoder_likelihood import (
    bernoulli_log_likelihood,
    check_scale,
    gaussian_log_likelihood,
)
from lightning_memwatch.functional.likelihood import (
    LogLikelihood,
    Posterior,
    importance_estimate,
    posterior_from_encoder,
    sample_posterior,
)
from lightning_memwatch.metrics import LikelihoodGap
from lightning_memwatch.viz import add_histograms, global_step, tensorboard_writer

FAMILY = "likelihood"
#: The decoder likelihoods built in: decoder outputs are Bernoulli logits or probabilities
#: (``"auto"``: whichever they look like when training starts), or the mean of a Gaussian of
#: fixed ``scale``.
BUILTIN_LIKELIHOODS = (*BERNOULLI, "gaussian")


class LikelihoodMonitor(MemwatchMonitor):
    """Watch the model's log-likelihood of its training samples against held-out ones.

    At the end of every ``every_n_epochs``-th validation epoch, ``log p(x)`` of each probe
    sample is estimated by importance sampling with the encoder as proposal
    (van den Burg & Williams (2021), eq. 9,
    :func:`~lightning_memwatch.functional.importance_log_likelihood`)::

        log p(x) ~ logsumexp_l [log p(x|z_l) + log p(z_l) - log q(z_l|x)] - log N,  z_l ~ q(z|x)

    with the standard normal prior ``p(z)``. Logs ``memwatch/likelihood/{train,val}``
    (mean ``log p(x)`` per split, nats), ``memwatch/likelihood/gap`` (``train - val``; **positive
    = memorization**: training samples are more likely than held-out samples of the same
    distribution), ``memwatch/likelihood/ks_pvalue`` (two-sample KS test of the per-sample
    values), and ``memwatch/likelihood/{seconds,probe_size,nonfinite}``. With a
    ``TensorBoardLogger``: histograms ``memwatch/likelihood/log_px/{train,val}``.

    The samples are drawn from a generator of the monitor's own, seeded by ``seed`` alone, the
    same at every epoch (so the curve moves with the model, a resumed run gets the same numbers
    and the global RNG is untouched), for the whole probe on every rank, so a sharded (DDP) run
    gives the single-process numbers.

    When training starts (and at a ``trainer.validate`` without a fit) the monitor runs the
    encoder, the decoder and the likelihood once on its training probe
    (:meth:`resolve_likelihood`), so that a misconfiguration fails then, not after epoch 0. A
    Bernoulli likelihood also needs both probes' inputs in ``[0, 1]``, and reads the decoder's
    outputs at one posterior draw per training probe sample: they look like probabilities when
    all lie in ``[0, 1]`` and one at least strictly inside
    (:func:`~lightning_memwatch.functional.decoder_likelihood.looks_like_probabilities`).
    ``"auto"`` then reads them as probabilities, else as logits (logged at info level, kept in
    ``resolved_likelihood``); ``"bernoulli"`` fails on outputs that look like probabilities (a
    sigmoid decoder read as logits gives a wrong ``log p(x)``), ``"bernoulli_probs"`` on
    outputs outside ``[0, 1]``. Why ``"auto"`` is safe: a sigmoid's outputs always lie in
    ``[0, 1]``, so a probability decoder is read as logits only if its outputs are all exactly 0
    or 1. Its failure mode: a logit decoder whose outputs all lie in ``[0, 1]`` when training
    starts (every ``sigmoid(l)`` between 0.5 and 0.73) is read as probabilities, and fails with
    an error at the first measurement where an output leaves ``[0, 1]``. Name the likelihood
    in either case.

    Args:
        decoder: name of the module's decoder (used by the built-in likelihoods).
        encoder: name of the module's encoder, required (``"auto"``: the first of ``encode``,
            ``encoder`` that the module has): it must return a
            ``torch.distributions.Distribution`` over the latents or a ``(mean, log_var)`` pair
            of tensors, the diagonal Gaussian ``q(z|x)`` (checked first when training starts);
            latent maps too (a diagonal Gaussian over ``(B, C, H, W)`` maps, diffusers'
            ``latent_dist``, is one over the flat latents).
        likelihood: ``"auto"`` (Bernoulli, decoder outputs read as probabilities or logits,
            see above), ``"bernoulli"`` (decoder outputs are logits, inputs in ``[0, 1]``),
            ``"bernoulli_probs"`` (decoder outputs are probabilities, e.g. a final sigmoid),
            ``"gaussian"`` (decoder outputs are the mean, standard deviation ``scale``), or the
            name of a module method ``log_likelihood(x, z) -> (B,)`` returning ``log p(x|z)``
            summed over each sample's elements
            (:func:`~lightning_memwatch.functional.bernoulli_log_likelihood`,
            :func:`~lightning_memwatch.functional.gaussian_log_likelihood`).
        scale: standard deviation ``sigma`` of the Gaussian likelihood.
        num_samples: importance samples ``N`` per probe sample (van den Burg: 128 or 256).
        Others: see :class:`~lightning_memwatch.callbacks.machinery.monitor.MemwatchMonitor`.
    """

    known_families = (FAMILY,)
    encoder_required = True

    def __init__(
        self,
        decoder: str = "decoder",
        encoder: str | None = "encoder",
        latent_dim: LatentSize | None = None,
        probe_size: int = 64,
        every_n_epochs: int = 1,
        likelihood: str = "auto",
        scale: float = 1.0,
        num_samples: int = 128,
        input_key: InputKey = 0,
        max_overhead: float = 0.05,
        seed: int = 0,
        *,
        decoder_output: str | None = None,
        encoder_output: str | None = None,
        preprocess: str | None = None,
    ) -> None:
        if encoder is None:
            raise ValueError(
                "Expected `encoder` to name the module's encoder but got None: the "
                "importance-sampled likelihood needs q(z|x) (a Distribution or (mean, log_var))"
            )
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
        if not isinstance(likelihood, str) or not likelihood:
            raise ValueError(
                f"Expected `likelihood` to be one of {BUILTIN_LIKELIHOODS} or the name of a "
                f"module method but got {likelihood!r}"
            )
        check_int("num_samples", num_samples)
        self.likelihood, self.scale, self.num_samples = likelihood, check_scale(scale), num_samples
        #: the likelihood measured with, set when training starts (``"auto"`` resolved)
        self.resolved_likelihood: str | None = None
        self.metric = LikelihoodGap()

    @property
    def families(self) -> tuple[str, ...]:
        return (FAMILY,)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            decoder=self.decoder_argument,
            likelihood=self.likelihood,
            probe_size=self.probe_size,
            seed=self.seed,
        )

    @property
    def logged_keys(self) -> frozenset[str]:
        keys = (*self.metric.stats, "seconds", "probe_size", "nonfinite", "staleness")
        return frozenset(f"memwatch/{FAMILY}/{key}" for key in keys)

    # ----------------------------------------------------------------- configuration
    def _likelihood_method(self, pl_module: pl.LightningModule) -> LogLikelihood:
        if not hasattr(pl_module, self.likelihood):
            raise ValueError(
                f"Expected `likelihood` to be one of {BUILTIN_LIKELIHOODS} or the name of a "
                f"method `log_likelihood(x, z) -> (B,)` of the module but "
                f"{type(pl_module).__name__} has no `{self.likelihood}` attribute"
            )
        return self._attribute(pl_module, self.likelihood, "likelihood")

    def likelihood_callables(
        self, pl_module: pl.LightningModule, likelihood: str | None = None
    ) -> tuple[Posterior, LogLikelihood]:
        """``(posterior, log_likelihood)`` of the module for
        :func:`~lightning_memwatch.functional.importance_log_likelihood`.

        ``likelihood``: the likelihood to build instead of :attr:`resolved_likelihood` (else the
        monitor's own); ``"auto"`` must be resolved first (:meth:`resolve_likelihood`).
        """
        name = likelihood or self.resolved_likelihood or self.likelihood
        posterior = posterior_from_encoder(self.encoder(pl_module))
        if name not in BUILTIN_LIKELIHOODS:
            return posterior, self._likelihood_method(pl_module)
        if name == "auto":
            raise ValueError(
                f'{type(self).__name__}(likelihood="auto") reads the decoder\'s outputs as '
                "probabilities or logits from what they look like on a probe: call "
                "`resolve_likelihood(pl_module, x)` first, or pass its result as `likelihood=`"
            )
        decoder = self.decoder(pl_module)
        if name == "gaussian":
            return posterior, gaussian_log_likelihood(decoder, self.scale)
        return posterior, bernoulli_log_likelihood(decoder, logits=name == "bernoulli")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.likelihood in BUILTIN_LIKELIHOODS:
            self.decoder(pl_module)
        else:
            self._likelihood_method(pl_module)

    def _prepare_probes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the probes, then check the configuration on them (:meth:`resolve_likelihood`)."""
        super()._prepare_probes(trainer, pl_module)
        check_posterior(self, pl_module, self.inputs["train"][:2])  # before advice on inputs
        if self.likelihood in BERNOULLI:
            check_unit_inputs(self._owner, self.inputs["val"], "validation")
        self.resolved_likelihood = None
        self.resolved_likelihood = self.resolve_likelihood(pl_module, self.inputs["train"])

    @property
    def _owner(self) -> str:
        return f"{type(self).__name__}(likelihood={self.likelihood!r})"

    def resolve_likelihood(self, pl_module: pl.LightningModule, x: Tensor) -> str:
        """Check the configuration on the probe ``x`` and return the likelihood to measure with
        (:func:`~lightning_memwatch.callbacks.machinery.likelihood_checks.resolve_likelihood`):
        ``"auto"`` gives ``"bernoulli_probs"`` or ``"bernoulli"``."""
        return resolve_likelihood(self, pl_module, x)

    # ------------------------------------------------------------------- measuring
    def log_px(
        self,
        pl_module: pl.LightningModule,
        x: Tensor,
        generator: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
    ) -> Tensor:
        """This rank's share (``shard``) of the per-sample ``log p(x)`` of the probe ``x``.

        The ``(N, P, m)`` latents are drawn for the whole probe on every rank (cheap: one encoder
        pass and ``N P m`` normals), then sharded with the inputs, so the values do not depend
        on the number of ranks.
        """
        name = self.resolved_likelihood or self.resolve_likelihood(pl_module, x)
        posterior, log_likelihood = self.likelihood_callables(pl_module, name)
        with torch.no_grad():
            q = posterior(x)
            z = sample_posterior(q, self.num_samples, generator=generator)
            if world_size > 1:
                x = shard(x, rank, world_size)
                if len(x) == 0:  # a probe smaller than the ranks: nothing of this rank's own
                    return torch.empty(0, dtype=torch.float64, device=x.device)
                z, q = z[:, rank::world_size], posterior(x)
            return importance_estimate(x, q, z, log_likelihood)

    def work(self, family: str, size: int) -> Work:
        """Decoder work of a measurement: ``num_samples`` posterior draws of each of ``size``
        samples per split, decoded in a few calls
        (:mod:`~lightning_memwatch.callbacks.machinery.costs`)."""
        rows = 2 * size * self.num_samples
        return Work(forward_calls=4, forward_rows=rows, fixed_ops=OTHER_FAMILY_OPS)

    def measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: dict[str, Tensor],
        rows: Tensor,
    ) -> dict[str, dict[str, Any]]:
        size = len(inputs["train"])
        values: dict[str, Tensor] = {}

        def likelihood() -> dict[str, Tensor]:
            # the same draws every epoch: the curve moves with the model, and a resumed or a
            # sharded run draws what one uninterrupted process does
            generator = torch.Generator().manual_seed(self.seed + 7919)
            for done, split in enumerate(SPLITS, 1):
                self.progress(FAMILY, done, len(SPLITS), unit="split")
                values[split] = self.log_px(
                    pl_module, inputs[split], generator, trainer.global_rank, trainer.world_size
                )
                self.metric.update(values[split], split)
            mine = shard(rows, trainer.global_rank, trainer.world_size)
            return self.rolled(trainer, FAMILY, self.metric, mine)

        writer = tensorboard_writer(trainer)

        def write() -> None:
            self.write_layout_once(writer)
            add_histograms(writer, f"memwatch/{FAMILY}/log_px", values, global_step(trainer))

        return {FAMILY: self.timed(FAMILY, size, likelihood, write if writer else None)}
