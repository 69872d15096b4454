"""RecoveryMonitor: how much better the generator reproduces its training probe than held-out
samples (``papers/webster_latent_recovery.txt`` §2-§3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_memwatch.callbacks.monitor import SPLITS, MemwatchMonitor
from lightning_memwatch.callbacks.probes import InputKey, latents_of
from lightning_memwatch.functional import recover_latents
from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.metrics import RecoveryGap
from lightning_memwatch.viz import global_step, tensorboard_writer
from lightning_memwatch.viz.recovery import write_recovery

#: Probe samples per L-BFGS problem. The chunks are fixed on the whole probe, and each is seeded
#: by its own position, so a DDP rank that solves some of them gets exactly the latents a single
#: process gets for them (the samples of one batched L-BFGS share its line search).
CHUNK = 32

KEYS = ("mre/train", "mre/val", "mre_gap", "ks_pvalue", "nonfinite", "seconds", "probe_size")


def chunk_seed(seed: int, split: str, index: int) -> int:
    """The seed of one chunk's prior restarts: a function of the monitor's seed, the split and the
    chunk's place in the probe only. Every epoch starts from the same draws, so an epoch-to-epoch
    change of the curves is the model's, and a resumed or a DDP run draws what one process does."""
    return ((seed * len(SPLITS) + SPLITS.index(split)) * 10_007 + index) % 2**63


def recover_chunk(
    decoder: Callable[[Tensor], Tensor],
    x: Tensor,
    split: str,
    index: int,
    *,
    latent_dim: int,
    seed: int,
    z_init: Tensor | None = None,
    steps: int = 50,
    restarts: int = 2,
) -> tuple[Tensor, Tensor]:
    """:func:`~lightning_memwatch.functional.recover_latents` on the ``index``-th chunk ``x``
    (at most :data:`CHUNK` samples) of probe ``split``, its prior restarts drawn from a generator
    seeded by :func:`chunk_seed`. Every monitor that recovers probe latents goes through here, so
    they all recover the same latents for the same probe and seed."""
    generator = torch.Generator(device=x.device).manual_seed(chunk_seed(seed, split, index))
    return recover_latents(
        decoder,
        x,
        latent_dim=latent_dim,
        z_init=z_init,
        steps=steps,
        restarts=restarts if steps > 0 else 0,
        generator=generator,
    )


class RecoveryMonitor(MemwatchMonitor):
    """Recover the latent of each probe sample and compare train with validation errors.

    ``papers/webster_latent_recovery.txt`` §2.1, §3 (DESIGN §2): for each probe sample ``y``,
    ``e(y) = min_z mean((f(z) - y)^2)`` by batched L-BFGS
    (:func:`~lightning_memwatch.functional.recover_latents`); a generator that overfits recovers
    its training samples markedly better than held-out ones. Logs (DESIGN §3):

    - ``memwatch/recovery/mre/{train,val}``: median recovery error of each probe (webster eq. 4);
    - ``memwatch/recovery/mre_gap``: ``(MRE_val - MRE_train) / MRE_val``; above ``0.10`` flags
      overfitting (webster eq. 5);
    - ``memwatch/recovery/ks_pvalue``: two-sample KS test of the train and validation errors;
      below ``0.01`` flags overfitting (webster §3.3);
    - ``memwatch/recovery/{seconds,probe_size,nonfinite}``: its cost, the probe size it used
      (0 for an epoch the cost budget skipped) and how many errors were not finite.

    With an ``encoder``, its latent is one more start point of the optimisation, and with
    ``steps=0`` the only one (the errors are then the autoencoder's reconstruction errors).
    The prior restarts are seeded by ``seed`` and the sample's place in the probe, the same at
    every epoch, so a resumed or a DDP run recovers what a single uninterrupted process does. The
    probe is solved in chunks of :data:`CHUNK` samples; under DDP the ranks share the chunks.

    With a ``TensorBoardLogger``: histograms of the train and validation errors, the two error
    distributions overlaid (webster fig. 3) and, when the outputs are images, target | recovered
    pairs (webster fig. 2).

    Args:
        steps: L-BFGS iterations per start (webster: about 50); ``0``: the encoder's latents as
            they are (needs ``encoder``).
        restarts: starts drawn from the prior ``N(0, I)`` per sample; ``0`` needs ``encoder``.
        Others: see :class:`~lightning_memwatch.callbacks.monitor.MemwatchMonitor`.

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
        latent_dim: int | None = None,
        probe_size: int = 64,
        every_n_epochs: int = 1,
        steps: int = 50,
        restarts: int = 2,
        input_key: InputKey = 0,
        max_overhead: float = 0.05,
        seed: int = 0,
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
        check_int("restarts", restarts, minimum=0)
        if encoder is None and (steps == 0 or restarts == 0):
            raise ValueError(
                "Expected an `encoder` when `steps` or `restarts` is 0 (nothing to start the "
                f"recovery from) but got steps={steps}, restarts={restarts} and no encoder: name "
                "the module's encoder, or use steps >= 1 and restarts >= 1"
            )
        self.steps, self.restarts = steps, restarts
        self.metric = RecoveryGap()

    @property
    def families(self) -> tuple[str, ...]:
        return self.known_families

    @property
    def logged_keys(self) -> frozenset[str]:
        return frozenset(f"memwatch/recovery/{key}" for key in KEYS)

    def recover(
        self, pl_module: pl.LightningModule, x: Tensor, split: str, index: int
    ) -> tuple[Tensor, Tensor]:
        """Latents and errors of one chunk ``x`` of probe ``split``, the ``index``-th chunk."""
        encoder = self.encoder(pl_module)
        z_init = None
        if encoder is not None:
            with torch.no_grad():
                z_init = latents_of(encoder(x)).detach()
        return recover_chunk(
            self.decoder(pl_module),
            x,
            split,
            index,
            latent_dim=self.latent_dim,
            seed=self.seed,
            z_init=z_init,
            steps=self.steps,
            restarts=self.restarts,
        )

    def measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: dict[str, Tensor]
    ) -> dict[str, dict[str, Any]]:
        size = len(inputs["train"])
        rank, world = trainer.global_rank, trainer.world_size
        chunks = [(split, start) for split in SPLITS for start in range(0, size, CHUNK)]
        writer = tensorboard_writer(trainer)
        errors: dict[str, list[Tensor]] = {split: [] for split in SPLITS}
        pairs: dict[str, tuple[Tensor, Tensor]] = {}

        def recovery() -> dict[str, Tensor]:
            for split, start in chunks[rank::world]:
                x = inputs[split][start : start + CHUNK]
                z, chunk_errors = self.recover(pl_module, x, split, start // CHUNK)
                errors[split].append(chunk_errors)
                if writer is not None and split not in pairs:
                    with torch.no_grad():
                        pairs[split] = (x, self.decoder(pl_module)(z))
            for split in SPLITS:  # a rank without a chunk of a split still takes part in the sync
                values = torch.cat(errors[split]) if errors[split] else torch.empty(0)
                self.metric.update(values.to(pl_module.device), split)
            return self.metric.scalars()

        def write() -> None:
            self.write_layout_once(writer)
            merged = {split: torch.cat(values) for split, values in errors.items() if values}
            write_recovery(writer, global_step(trainer), merged, pairs)

        return {"recovery": self.timed("recovery", size, recovery, write if writer else None)}
