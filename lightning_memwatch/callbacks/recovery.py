"""RecoveryMonitor: how much better the generator reproduces its training probe than held-out
samples (Webster et al. (2019), sec. 2-3)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_memwatch.callbacks.machinery.costs import Work, recovery_work
from lightning_memwatch.callbacks.machinery.latent_views import LatentSize, latents_of
from lightning_memwatch.callbacks.machinery.latents import (
    CHUNK,
    LatentStore,
    recover_rows,
    recovery_starts,
)
from lightning_memwatch.callbacks.machinery.monitor import SPLITS, MemwatchMonitor
from lightning_memwatch.callbacks.machinery.probes import InputKey
from lightning_memwatch.callbacks.machinery.rolling import slice_indices
from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.metrics import RecoveryGap
from lightning_memwatch.viz import global_step, tensorboard_writer
from lightning_memwatch.viz.recovery import write_recovery

KEYS = (
    "mre/train",
    "mre/val",
    "mre_gap",
    "ks_pvalue",
    "effect",
    "effect_lower",
    "effect_upper",
    "nonfinite",
    "staleness",
    "seconds",
    "probe_size",
)


class RecoveryMonitor(MemwatchMonitor):
    """Recover the latent of each probe sample and compare train with validation errors.

    Webster et al. (2019), sec. 2.1, sec. 3: for each probe sample ``y``,
    ``e(y) = min_z mean((f(z) - y)^2)`` by batched L-BFGS
    (:func:`~lightning_memwatch.functional.recover_latents`); a generator that overfits recovers
    its training samples markedly better than held-out ones. Logs:

    - ``memwatch/recovery/mre/{train,val}``: median recovery error of each probe
      (Webster et al. (2019), eq. 4);
    - ``memwatch/recovery/mre_gap``: ``(MRE_val - MRE_train) / MRE_val``; above ``0.10`` flags
      overfitting (Webster et al. (2019), eq. 5);
    - ``memwatch/recovery/ks_pvalue``: two-sample KS test of the train and validation errors;
      below ``0.01`` flags overfitting (Webster et al. (2019), sec. 3.3);
    - ``memwatch/recovery/effect``: Cliff's delta ``P(e_train > e_val) - P(e_train < e_val)``,
      ``-1`` when every train error is below every validation error, and
      ``memwatch/recovery/effect_{lower,upper}``: its one-sided 95 % DeLong bounds; a size, not
      a test, so a harmless gap does not cross a threshold on it as the probe grows.
      ``MemorizationEarlyStopping("memwatch/recovery/effect_upper", threshold=-0.5,
      mode="below")`` stops once, with 95 % confidence, a train error is below a validation
      error in more than 75 % of pairs; ``benchmarks/detection.py`` measures it, and the
      calibrated rule, this key agreeing with psi
      (:class:`~lightning_memwatch.callbacks.rules.EffectAgreement`);
    - ``memwatch/recovery/{seconds,probe_size,nonfinite,staleness}``: its cost, the probe size it
      used (0 for an epoch the cost budget skipped), how many errors were not finite and the age
      in epochs of the oldest error in use (the rolling probe of
      :class:`~lightning_memwatch.callbacks.machinery.monitor.MemwatchMonitor`).

    Each sample's best latent is kept and starts its next recovery
    (:mod:`~lightning_memwatch.callbacks.machinery.latents`): a sample's first recovery, and every
    ``restart_every``-th, runs ``steps`` iterations from ``restarts`` prior draws, the kept
    latent and the encoder's; the others ``warm_steps`` from the kept latent and the encoder's.
    With an ``encoder`` and ``steps=0`` the encoder's latent is the only start (the errors are
    then the autoencoder's reconstruction errors). The prior draws are seeded by ``seed``, the
    chunk's place in the probe and its visit count, so a resumed or a DDP run recovers what a
    single uninterrupted process does. The probe is solved in chunks of at most :data:`CHUNK`
    samples; under DDP the ranks share the chunks.

    With a ``TensorBoardLogger``: histograms of the train and validation errors, the two error
    distributions overlaid (Webster et al. (2019), fig. 3) and, when the outputs are images,
    target | recovered pairs (Webster et al. (2019), fig. 2).

    Args:
        steps: L-BFGS iterations per start (Webster et al. (2019): about 50); ``0``: the encoder's
            latents as they are (needs ``encoder``).
        restarts: starts drawn from the prior ``N(0, I)`` per sample; ``0`` needs ``encoder``.
        warm_steps: L-BFGS iterations of a warm-started recovery (default 20: 0.11-0.15x the
            cost of a cold one, errors 0.4-6% above it; 10 was 26% above on a conv decoder).
        restart_every: every this many recoveries of a sample, a cold one (default 5).
        Others: see :class:`~lightning_memwatch.callbacks.machinery.monitor.MemwatchMonitor`.

    Example::

        >>> RecoveryMonitor(steps=0)
        Traceback (most recent call last):
        ...
        ValueError: Expected an `encoder` when `steps` or `restarts` is 0 (nothing to start the ...
    """

    known_families = ("recovery",)

    def __init__(
        self,
        decoder: str = "decoder",
        encoder: str | None = None,
        latent_dim: LatentSize | None = None,
        probe_size: int = 64,
        every_n_epochs: int = 1,
        steps: int = 50,
        restarts: int = 2,
        input_key: InputKey = 0,
        max_overhead: float = 0.05,
        seed: int = 0,
        warm_steps: int = 20,
        restart_every: int = 5,
        *,
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
        check_int("steps", steps, minimum=0)
        self.warm_steps = check_int("warm_steps", warm_steps, minimum=0)
        self.restart_every = check_int("restart_every", restart_every)
        check_int("restarts", restarts, minimum=0)
        if encoder is None and (steps == 0 or restarts == 0):
            raise ValueError(
                "Expected an `encoder` when `steps` or `restarts` is 0 (nothing to start the "
                f"recovery from) but got steps={steps}, restarts={restarts} and no encoder: name "
                "the module's encoder, or use steps >= 1 and restarts >= 1"
            )
        self.steps, self.restarts = steps, restarts
        self.metric = RecoveryGap()
        self.latent_store = LatentStore(probe_size)

    @property
    def families(self) -> tuple[str, ...]:
        return self.known_families

    @property
    def logged_keys(self) -> frozenset[str]:
        return frozenset(f"memwatch/recovery/{key}" for key in KEYS)

    def work(self, family: str, size: int) -> Work:
        """The next recovery of ``size`` rows per split: per chunk, its starts (warm, cold or a
        restart, as the latent store says) times its L-BFGS iterations."""
        rows = slice_indices(self.cursor, size, self.probe_size)
        work = Work()
        for starts, steps in recovery_starts(
            self.latent_store,
            rows,
            has_encoder=self.encoder_name is not None,
            steps=self.steps,
            restarts=self.restarts,
            warm_steps=self.warm_steps,
            restart_every=self.restart_every,
        ):
            work = work + recovery_work(min(size, CHUNK), starts, steps, splits=1)
        return work

    def recover(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        x: Tensor,
        split: str,
        rows: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Latents and errors of one chunk ``x``, the probe ``rows`` of ``split``."""
        encoder = self.encoder(pl_module)
        z_encoder = None
        if encoder is not None:
            with torch.no_grad():
                z_encoder = latents_of(encoder(x)).detach()
        return recover_rows(
            self.decoder(pl_module),
            x,
            split,
            rows,
            self.latent_store,
            latent_dim=self.latent_dim,
            seed=self.seed,
            epoch=trainer.current_epoch,
            z_encoder=z_encoder,
            steps=self.steps,
            restarts=self.restarts,
            warm_steps=self.warm_steps,
            restart_every=self.restart_every,
        )

    def measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: dict[str, Tensor],
        rows: Tensor,
    ) -> dict[str, dict[str, Any]]:
        size = len(inputs["train"])
        rank, world = trainer.global_rank, trainer.world_size
        chunks = [(split, start) for split in SPLITS for start in range(0, size, CHUNK)]
        writer = tensorboard_writer(trainer)
        errors: dict[str, list[Tensor]] = {split: [] for split in SPLITS}
        mine: dict[str, list[Tensor]] = {split: [] for split in SPLITS}
        pairs: dict[str, tuple[Tensor, Tensor]] = {}

        def recovery() -> dict[str, Tensor]:
            own = chunks[rank::world]
            for done, (split, start) in enumerate(own, 1):
                self.progress("recovery", done, len(own))
                x, chunk_rows = inputs[split][start : start + CHUNK], rows[start : start + CHUNK]
                z, chunk_errors = self.recover(trainer, pl_module, x, split, chunk_rows)
                errors[split].append(chunk_errors)
                mine[split].append(chunk_rows)
                if writer is not None and split not in pairs:
                    with torch.no_grad():
                        pairs[split] = (x, self.decoder(pl_module)(z))
            device = pl_module.device
            by_split = {}
            for split in SPLITS:  # a rank without a chunk of a split still takes part in the sync
                values = torch.cat(errors[split]) if errors[split] else torch.empty(0)
                self.metric.update(values.to(device), split)
                by_split[split] = torch.cat(mine[split]) if mine[split] else rows[:0]
            return self.rolled(trainer, "recovery", self.metric, by_split)

        def write() -> None:
            self.write_layout_once(writer)
            merged = {split: torch.cat(values) for split, values in errors.items() if values}
            write_recovery(writer, global_step(trainer), merged, pairs, figures=self.figures_due)

        return {"recovery": self.timed("recovery", size, recovery, write if writer else None)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "latents": self.latent_store.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "latents" in state_dict:
            self.latent_store.load_state_dict(state_dict["latents"])
