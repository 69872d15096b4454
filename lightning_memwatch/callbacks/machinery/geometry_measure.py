"""GeometryMonitor's measurement of one slice of its probe: the spectrum pass (exact or top
``k``), the density family (dip and decay, reusing the spectrum pass's spectra and top
vectors) and the complexity family, each timed, with its TensorBoard artifacts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_memwatch.callbacks.machinery.costs import (
    OTHER_FAMILY_OPS,
    Work,
    density_work,
    recovery_work,
    spectrum_work,
)
from lightning_memwatch.callbacks.machinery.latents import CHUNK, DEFAULT_SCHEDULE, recovery_starts
from lightning_memwatch.callbacks.machinery.monitor import SPLITS
from lightning_memwatch.callbacks.machinery.probe_latents import nearest_train_neighbours
from lightning_memwatch.callbacks.machinery.probes import shard
from lightning_memwatch.callbacks.machinery.rolling import slice_indices
from lightning_memwatch.callbacks.machinery.spectra import spectral_head
from lightning_memwatch.functional import decay_terms, dip_terms, local_complexity
from lightning_memwatch.functional.decay import AUTO_RADII_FRACTIONS
from lightning_memwatch.functional.priors import sample_prior
from lightning_memwatch.functional.profiles import line_profile, path_profile
from lightning_memwatch.viz import global_step, tensorboard_writer
from lightning_memwatch.viz.geometry import write_geometry

#: Offset of the seed of the complexity family's ball samples (fixed across epochs).
COMPLEXITY_SEED_OFFSET = 104729


def geometry_work(monitor: Any, family: str, size: int) -> Work:
    """Decoder work of ``family`` on ``size`` samples per split (exact spectra: a top-k pass
    is priced as exact), and, without an encoder, the latent recovery of the slice that the
    first family pays for (:mod:`~lightning_memwatch.callbacks.machinery.costs`)."""
    if family == "spectrum":
        work = spectrum_work(size)
    elif family == "density":
        work = density_work(size, len(monitor.radii or AUTO_RADII_FRACTIONS))
    else:  # complexity: each ball's vertices and samples, both splits
        rows = 2 * size * (2 * (monitor.latent_dim or 0) + monitor.complexity_samples)
        work = Work(forward_calls=2, forward_rows=rows, fixed_ops=OTHER_FAMILY_OPS)
    if monitor.encoder_name is None and family == monitor.families[0]:
        rows_now = slice_indices(monitor.cursor, size, monitor.probe_size)
        store, schedule = monitor.latent_store, DEFAULT_SCHEDULE
        for starts, steps in recovery_starts(store, rows_now, has_encoder=False, **schedule):
            work = work + recovery_work(min(size, CHUNK), starts, steps, splits=1)
    return work


def measure_geometry(
    monitor: Any,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    inputs: dict[str, Tensor],
    rows: Tensor,
) -> dict[str, dict[str, Any]]:
    """:meth:`GeometryMonitor.measure <lightning_memwatch.callbacks.GeometryMonitor.measure>`:
    each family of ``monitor`` on probe ``rows`` (``inputs`` per split), this rank's shard of
    the per-sample work; returns the scalars to log per family."""
    decoder = monitor.decoder(pl_module)
    size = len(inputs["train"])
    rank, world = trainer.global_rank, trainer.world_size
    mine = shard(rows, rank, world)
    cache: dict[str, Tensor] = {}
    heads: dict[str, Tensor] = {}  # per split: the spectrum pass's (s, v_1) of this rank
    figures = monitor.figures_due

    def latents(split: str) -> Tensor:
        if split not in cache:
            cache[split] = monitor.probe_latents(trainer, pl_module, inputs[split], split, rows)
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
        for done, split in enumerate(SPLITS, 1):
            monitor.progress("spectrum", done, len(SPLITS), unit="split")
            z = shard(latents(split), rank, world)
            if len(z):  # a rank without a sample of its own still takes part in the sync
                heads[split] = head_of(z)
                s = heads[split][:, : -z.shape[1]]
                monitor.spectrum_metric.update(s, split)
                artifacts["log_s"][split] = s.log()
        # the same descriptors where the decoder is sampled, the draws seeded per epoch
        generator = torch.Generator().manual_seed(monitor.seed + 7919 * (trainer.current_epoch + 1))
        prior = sample_prior(monitor.prior, size, monitor.latent_dim, generator=generator)
        # every rank the whole draw (the metric does not sync), so no rank is ever empty
        monitor.prior_metric.update(spectrum_of(prior.to(inputs["train"])), "train")
        prior_means = {
            key.replace("/train", "/prior"): value
            for key, value in monitor.prior_metric.compute().items()
            if key.endswith("/train")
        }
        monitor.prior_metric.reset()
        return {**monitor.rolled(trainer, "spectrum", monitor.spectrum_metric, mine), **prior_means}

    # the decoder's outputs have as many values as an input (checked at train start)
    k = monitor.spectrum_size(monitor.latent_dim, inputs["train"][0].numel())

    def head_of(z: Tensor) -> Tensor:
        return spectral_head(decoder, z, k)

    def spectrum_of(z: Tensor) -> Tensor:
        return head_of(z)[:, : -z.shape[1]]

    def density() -> dict[str, Tensor]:
        pool = monitor.inputs["train"].to(inputs["train"].device)
        for done, split in enumerate(SPLITS, 1):
            monitor.progress("density", done, len(SPLITS), unit="split")
            x, z = shard(inputs[split], rank, world), shard(latents(split), rank, world)
            if not len(z):
                continue
            query = shard(rows, rank, world) if split == "train" else None
            neighbours = nearest_train_neighbours(x, pool, query)
            ends = monitor.neighbour_latents(trainer, pl_module, neighbours)
            head = heads.get(split)
            s_start = None if head is None else head[:, : -z.shape[1]]
            # the spectrum pass's k: top-k spectra everywhere when it took the top k
            options = {"rtol": monitor.rtol, "prior": monitor.prior, "top_k": k}
            dip = dip_terms(decoder, z, ends, s_start=s_start, **options)
            decay = decay_terms(decoder, z, radii=monitor.radii, head=head, **options)
            monitor.density_metric.update(
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
                        decoder, z[0], ends[0], rtol=monitor.rtol, prior=monitor.prior
                    )
                    artifacts["paths"][split] = (arc, lp)
                    artifacts["lines"][split] = line_profile(
                        decoder, z[0], rtol=monitor.rtol, prior=monitor.prior
                    )
                    if split == "train":
                        with torch.no_grad():
                            artifacts["path_outputs"] = decoder(points)
        out = monitor.rolled(trainer, "density", monitor.density_metric, mine)
        radii = {f"radius_{i}": torch.tensor(r) for i, r in enumerate(monitor.radii)}
        return {**out, **radii}

    def complexity() -> dict[str, Tensor]:
        # Every rank counts the whole slice (a few forward passes) with the same seeded
        # draws, then records its shard: the gathered result is the single-process one.
        generator = torch.Generator().manual_seed(monitor.seed + COMPLEXITY_SEED_OFFSET)
        for split in SPLITS:
            counts = local_complexity(
                decoder,
                latents(split),
                radius=monitor.complexity_radius,
                num_samples=monitor.complexity_samples,
                generator=generator,
            )
            monitor.complexity_metric.update(shard(counts, rank, world), split)
            artifacts["complexity"][split] = counts
        return monitor.rolled(trainer, "complexity", monitor.complexity_metric, mine)

    steps: dict[str, Callable[[], dict[str, Tensor]]] = {
        "spectrum": spectrum,
        "density": density,
        "complexity": complexity,
    }
    step = global_step(trainer)
    if writer is not None:
        monitor.write_layout_once(writer)
    return {
        family: monitor.timed(
            family,
            size,
            steps[family],
            None
            if writer is None
            else lambda f=family: write_geometry(writer, step, f, artifacts, figures),
        )
        for family in monitor.families_now or monitor._families
    }
