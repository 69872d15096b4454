"""Where GeometryMonitor measures: the latents of its probe samples and of their dip-path ends.

With an encoder, the encoder's latents. Without one, the latents latent recovery finds
(:mod:`~lightning_memwatch.callbacks.machinery.latents`), moved into the prior's typical set
(:func:`~lightning_memwatch.functional.priors.project_to_typical_set`): recovery on a generator
that is not an autoencoder (a GAN) can end far outside it (measured: norm ~130 under an
``N(0, I)`` prior on 100 dimensions, whose typical norm is ~10), where the generator is never
sampled and its geometry says nothing about what it generates. Projection rather than a
prior-penalised recovery keeps one recovery per sample for every monitor (``RecoveryMonitor``
reports Webster's plain reconstruction error, and shares its latents); the projected latent
decodes to a nearby, not the same, output.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_memwatch.callbacks.machinery.latent_views import latents_of
from lightning_memwatch.callbacks.machinery.latents import CHUNK, LatentStore, recover_rows
from lightning_memwatch.functional.priors import project_to_typical_set


def nearest_train_neighbours(queries: Tensor, pool: Tensor, query_index: Tensor | None) -> Tensor:
    """Index in ``pool`` of each query's nearest neighbour (L2, inputs flattened).

    ``query_index`` gives, for queries taken from the pool itself, their own row so that a point
    is never its own neighbour (Feiszli (2017), sec. 4.1, remark 2b: paths join nearest neighbours).
    """
    dist = torch.cdist(queries.flatten(1).double(), pool.flatten(1).double())
    if query_index is not None:
        dist[torch.arange(len(queries), device=dist.device), query_index] = torch.inf
    return dist.argmin(dim=1)


class ProbeLatents:
    """The latents a geometry monitor measures at (mixed into ``GeometryMonitor``)."""

    latent_store: LatentStore
    prior: Any

    def _store(self: Any, trainer: pl.Trainer) -> LatentStore:
        """The store recovered latents go into: a single-process ``RecoveryMonitor`` of the same
        decoder, probe and seed (a monitor of the ``"recovery"`` family with a ``latent_store``)
        shares its own (a sample is solved once an epoch); else this monitor's own (every rank
        recovers the whole slice, so the stores agree)."""
        if trainer.world_size == 1:
            for callback in trainer.callbacks:
                if (
                    callback is not self
                    and "recovery" in getattr(callback, "families", ())
                    and isinstance(getattr(callback, "latent_store", None), LatentStore)
                    and callback.decoder_name == self.decoder_name
                    and (callback.probe_size, callback.seed) == (self.probe_size, self.seed)
                ):
                    return callback.latent_store
        return self.latent_store

    def probe_latents(
        self: Any,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        x: Tensor,
        split: str,
        rows: Tensor,
    ) -> Tensor:
        """The latents of probe ``rows`` of ``split`` (inputs ``x``): the encoder's, else the
        recovered ones projected into the prior's typical set (module docstring)."""
        encoder = self.encoder(pl_module)
        if encoder is not None:
            with torch.no_grad():
                return latents_of(encoder(x)).detach()
        decoder, store = self.decoder(pl_module), self._store(trainer)
        chunks = [
            recover_rows(
                decoder,
                x[start : start + CHUNK],
                split,
                rows[start : start + CHUNK],
                store,
                latent_dim=self.latent_dim,
                seed=self.seed,
                epoch=trainer.current_epoch,
            )[0]
            for start in range(0, len(x), CHUNK)
        ]
        return project_to_typical_set(torch.cat(chunks), self.prior)

    def neighbour_latents(
        self: Any, trainer: pl.Trainer, pl_module: pl.LightningModule, rows: Tensor
    ) -> Tensor:
        """Latents of train probe ``rows`` that are dip-path ends: the encoder's, else the latest
        recovered ones (recovered now where the store has none yet), projected likewise."""
        x = self.inputs["train"][rows.cpu()].to(pl_module.device).clone()
        if self.encoder(pl_module) is None:
            kept, _ = self._store(trainer).get("train", rows)
            if kept is not None and bool(torch.isfinite(kept).all()):
                return project_to_typical_set(kept.to(x.device), self.prior)
        return self.probe_latents(trainer, pl_module, x, "train", rows)
