"""Attaching a monitor to a fit: the setup checks, and the probes drawn when training starts.

At ``setup`` a monitor checks that its attributes exist, that no other attached monitor logs its
keys, and that there is held-out data. When training starts (before any epoch, also for a module
without ``validation_step`` or with ``limit_val_batches=0``: the validation loader is then taken
from where ``fit`` would get it) it draws its probes from the indices each loader yields
(:mod:`~lightning_memwatch.callbacks.machinery.samplers`), checks that the validation probe is held
out, reads the samples under an isolated RNG seeded by its seed, preprocesses them, casts them to
the decoder's dtype, and runs the model once on them
(:mod:`~lightning_memwatch.callbacks.machinery.preflight`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_memwatch.callbacks.machinery.adapters import parameter_dtype
from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.callbacks.machinery.preflight import (
    check_attachment,
    check_no_shared_keys,
    model_inputs,
)
from lightning_memwatch.callbacks.machinery.probes import (
    draw_indices,
    gather_inputs,
    has_held_out_data,
    seeded_rng,
    train_loader,
    val_loader,
)
from lightning_memwatch.callbacks.machinery.samplers import (
    check_held_out,
    check_resumed,
    probe_candidates,
)

SPLITS = ("train", "val")


@contextmanager
def named(monitor: str) -> Iterator[None]:
    """Prefix ``monitor`` to a ``ValueError`` raised in the block whose message does not name it
    (the data helpers do not know which monitor calls them)."""
    try:
        yield
    except ValueError as error:
        if monitor in str(error):
            raise
        raise ValueError(f"{monitor}: {error}").with_traceback(error.__traceback__) from (
            error.__cause__
        )


def no_held_out_data(monitor: str) -> ValueError:
    """The error of a fit with no validation data anywhere."""
    return ValueError(
        f"Expected held-out data for {monitor}'s validation probe but there is none: the trainer "
        "has no validation dataloader, none was passed to `trainer.fit`, and neither the "
        "datamodule nor the module defines `val_dataloader()`. Pass `val_dataloaders=` to "
        "`trainer.fit` or define `val_dataloader()` (no `validation_step` is needed)"
    )


def check_setup(
    monitor: Any, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
) -> None:
    """The checks that need no data: attributes, keys shared with another monitor, and (for
    ``fit``) that validation data exists."""
    with named(type(monitor).__name__):
        _check_setup(monitor, trainer, pl_module, stage)


def _check_setup(
    monitor: Any, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
) -> None:
    if monitor.uses_decoder:
        monitor.decoder(pl_module)
    monitor.encoder(pl_module)
    if monitor.preprocess_name is not None:
        monitor._attribute(pl_module, monitor.preprocess_name, "preprocess")
    check_no_shared_keys(monitor, trainer.callbacks)
    if stage == "fit" and not has_held_out_data(trainer, pl_module):
        raise no_held_out_data(type(monitor).__name__)


def prepare_probes(monitor: Any, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Set ``monitor.indices`` (drawn, or kept from a checkpoint), ``monitor.inputs``,
    ``monitor.dataset_sizes`` and ``monitor.latent_dim`` (see the module docstring)."""
    with named(type(monitor).__name__):
        _prepare_probes(monitor, trainer, pl_module)


def _prepare_probes(monitor: Any, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    name, device = type(monitor).__name__, pl_module.device
    loaders = {"train": train_loader(trainer, pl_module), "val": val_loader(trainer, pl_module)}
    if loaders["val"] is None:
        raise no_held_out_data(name)
    found = {split: probe_candidates(trainer, loaders[split], split) for split in SPLITS}
    for offset, split in enumerate(SPLITS):
        what, size = ("training" if split == "train" else "validation"), len(found[split].dataset)
        if split in monitor.indices:
            saved = monitor.dataset_sizes.get(split)
            check_resumed(name, split, monitor.indices[split], size, saved)
        else:
            monitor.indices[split] = draw_indices(
                found[split].indices,
                monitor.probe_size,
                monitor.seed + offset,
                what,
                limit=found[split].limit,
            )
        monitor.dataset_sizes[split] = size
    check_held_out(name, found["train"], found["val"], monitor.indices["val"])
    preprocess = None
    if monitor.preprocess_name is not None:
        preprocess = monitor._attribute(pl_module, monitor.preprocess_name, "preprocess")
    model = (monitor.decoder(pl_module).fn,) if monitor.uses_decoder else ()
    dtype = parameter_dtype(*model, pl_module)
    with measurement_context(pl_module, device), torch.no_grad():
        for offset, split in enumerate(SPLITS):
            what = "training" if split == "train" else "validation"
            with seeded_rng(monitor.seed + offset):
                x = gather_inputs(
                    found[split].dataset,
                    monitor.indices[split],
                    monitor.input_key,
                    preprocess=preprocess,
                    collate=found[split].loader.collate_fn,
                    device=device,
                )
            monitor.inputs[split] = model_inputs(x.detach().cpu(), dtype, name, what)
    monitor.latent_dim = check_attachment(monitor, pl_module)
