"""Attaching a monitor to a fit: the setup checks, and the probes drawn when training starts.

At ``setup`` a monitor checks that its attributes exist, that no other attached monitor logs its
keys, and that there is held-out data. When training starts (before any epoch, also for a module
without ``validation_step`` or with ``limit_val_batches=0``: the validation loader is then taken
from where ``fit`` would get it) it checks that the validation loader is held out, draws its
probes from the indices each loader yields
(:mod:`~lightning_memwatch.callbacks.machinery.samplers`), distinct in content and as many as the
loaders allow (:mod:`~lightning_memwatch.callbacks.machinery.drawing`), reads the samples under an
isolated RNG seeded by its seed, preprocesses them, casts them to the decoder's dtype, and runs
the model once on them (:mod:`~lightning_memwatch.callbacks.machinery.preflight`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_memwatch.callbacks.machinery.adapters import parameter_dtype
from lightning_memwatch.callbacks.machinery.drawing import (
    WHAT,
    Drawn,
    check_shared_content,
    draw_distinct,
    report_draw,
)
from lightning_memwatch.callbacks.machinery.isolation import measurement_context
from lightning_memwatch.callbacks.machinery.preflight import (
    check_attachment,
    check_no_shared_keys,
    model_inputs,
)
from lightning_memwatch.callbacks.machinery.probes import (
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
EMPTY = torch.zeros(0, dtype=torch.long)


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
    ``monitor.effective_probe_size``, ``monitor.dataset_sizes`` and ``monitor.latent_dim`` (see
    the module docstring)."""
    with named(type(monitor).__name__):
        _prepare_probes(monitor, trainer, pl_module)


def _prepare_probes(monitor: Any, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    name, device = type(monitor).__name__, pl_module.device
    loaders = {"train": train_loader(trainer, pl_module), "val": val_loader(trainer, pl_module)}
    if loaders["val"] is None:
        raise no_held_out_data(name)
    found = {split: probe_candidates(trainer, loaders[split], split) for split in SPLITS}
    for split in SPLITS:
        if split in monitor.indices:
            saved = monitor.dataset_sizes.get(split)
            check_resumed(name, split, monitor.indices[split], len(found[split].dataset), saved)
        monitor.dataset_sizes[split] = len(found[split].dataset)
    check_held_out(name, found["train"], found["val"], monitor.indices.get("val", EMPTY))
    preprocess = None
    if monitor.preprocess_name is not None:
        preprocess = monitor._attribute(pl_module, monitor.preprocess_name, "preprocess")
    model = (monitor.decoder(pl_module).fn,) if monitor.uses_decoder else ()
    dtype = parameter_dtype(*model, pl_module)

    def read(split: str, indices: Tensor) -> Tensor:
        with seeded_rng(monitor.seed + SPLITS.index(split)):
            return gather_inputs(
                found[split].dataset,
                indices,
                monitor.input_key,
                preprocess=preprocess,
                collate=found[split].loader.collate_fn,
                device=device,
            )

    with measurement_context(pl_module, device), torch.no_grad():
        drawn = _draw(monitor, found, read) if "train" not in monitor.indices else {}
        tied = monitor.tied_splits
        monitor.effective_probe_size = min(len(monitor.indices[split]) for split in tied)
        monitor.budget.probe_size = monitor.effective_probe_size
        for split in SPLITS:
            fresh = drawn[split].inputs if split in drawn else None
            x = read(split, monitor.indices[split]) if fresh is None else fresh
            monitor.inputs[split] = model_inputs(x.detach().cpu(), dtype, name, WHAT[split])
    monitor.latent_dim = check_attachment(monitor, pl_module)


def _draw(monitor: Any, found: dict, read: Callable[[str, Tensor], Tensor]) -> dict[str, Drawn]:
    """Draw both probes, distinct in content, cut the tied splits to one size, report, and set
    ``monitor.indices`` (:mod:`~lightning_memwatch.callbacks.machinery.drawing`)."""
    requests = monitor.probe_requests()
    drawn = {
        split: draw_distinct(
            found[split].indices,
            requests[split][1],
            monitor.seed + offset,
            partial(read, split),
        )
        for offset, split in enumerate(SPLITS)
    }
    name = type(monitor).__name__
    report_draw(name, requests, drawn, found, monitor.tied_splits)
    check_shared_content(name, drawn["train"], drawn["val"])
    for split in SPLITS:
        monitor.indices[split] = drawn[split].indices
    return drawn
