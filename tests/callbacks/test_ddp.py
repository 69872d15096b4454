"""Two CPU processes (``ddp_spawn``, gloo): the sharded probe gives the single-process numbers."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest

from lightning_memwatch.callbacks import (
    GeometryMonitor,
    LikelihoodMonitor,
    MemorizationEarlyStopping,
    RecoveryMonitor,
    SampleMonitor,
)
from tests.conftest import (
    DigitsDataModule,
    FixedDecoderModule,
    make_autoencoder,
    quiet_trainer,
)


class RecordStop(L.Callback):
    """Each rank writes where it stopped (callback state does not travel back from spawn)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer, pl_module):
        stopper = next(c for c in trainer.callbacks if isinstance(c, MemorizationEarlyStopping))
        path = f"{self.folder}/rank{trainer.global_rank}.txt"
        with open(path, "w") as handle:
            handle.write(f"{trainer.current_epoch} {stopper.stopped_epoch}")


MONITORS = {
    "geometry": (
        functools.partial(
            GeometryMonitor,
            encoder="encode",
            probe_size=12,
            max_overhead=math.inf,
            radii=(0.1, 0.2),
        ),
        "memwatch/spectrum/log_volume/train",
    ),
    # radii="auto": rank 0's radii on both ranks, so the gathered decays are one process's
    "geometry_auto_radii": (
        functools.partial(
            GeometryMonitor,
            encoder="encode",
            probe_size=12,
            max_overhead=math.inf,
            radii="auto",
            families=("density",),
        ),
        "memwatch/density/radius_0",
    ),
    # the held-out probe sharded, the generated samples too; the reference on every rank
    "samples": (
        functools.partial(
            SampleMonitor,
            probe_size=40,
            reference_size=96,
            num_generated=101,
            cells=2,
            max_overhead=math.inf,
        ),
        "memwatch/samples/ct",
    ),
    # 40 a split: one recovery chunk each, one per rank; warm starts carry from epoch to epoch
    "recovery": (
        functools.partial(RecoveryMonitor, probe_size=40, steps=10, max_overhead=math.inf),
        "memwatch/recovery/mre/train",
    ),
}


def fixed_decoder_module() -> FixedDecoderModule:
    """A decoder that training does not move: recovery (stateful: each measurement starts from
    the last one's latents) then gives the same numbers at every epoch of a DDP and of a
    single-process fit."""
    L.seed_everything(0, verbose=False)
    return FixedDecoderModule(make_autoencoder(dropout=0.0).decoder, 4)


def memwatch_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("memwatch/")}


@pytest.mark.parametrize("name", sorted(MONITORS))
def test_ddp_metrics_equal_a_single_process_run_and_both_ranks_stop_together(name, tmp_path):
    make_monitor, key = MONITORS[name]
    L.seed_everything(0, verbose=False)
    model = make_autoencoder(dropout=0.0) if name != "recovery" else fixed_decoder_module()
    # a rule that holds at every measurement: with patience 1 it fires at epoch 1 of 4
    stopper = MemorizationEarlyStopping(key, threshold=-1e9, mode="above", patience=1)
    ddp = quiet_trainer(
        callbacks=[make_monitor(), stopper, RecordStop(str(tmp_path))],
        max_epochs=4,
        strategy="ddp_spawn" if name != "recovery" else "ddp_spawn_find_unused_parameters_true",
        devices=2,
        num_sanity_val_steps=0,
    )
    ddp.fit(model, datamodule=DigitsDataModule())
    stops = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert stops == ["2 1", "2 1"]
    distributed = memwatch_metrics(ddp)
    # the stopper's decision at its last check (epoch 1, where it fired on both ranks)
    assert distributed.pop("memwatch/early_stopping/triggered") == 1.0

    if name != "recovery":
        # The same (trained, returned from rank 0) weights, one process, the same seeded probe.
        single = quiet_trainer(callbacks=[make_monitor()])
        single.validate(model, datamodule=DigitsDataModule(), verbose=False)
    else:
        # The same fixed decoder, one process, the same epochs and warm starts.
        stopper = MemorizationEarlyStopping(key, threshold=-1e9, mode="above", patience=1)
        single = quiet_trainer(
            callbacks=[make_monitor(), stopper], max_epochs=4, num_sanity_val_steps=0
        )
        single.fit(fixed_decoder_module(), datamodule=DigitsDataModule())
    reference = memwatch_metrics(single)
    reference.pop("memwatch/early_stopping/triggered", None)
    assert distributed.keys() == reference.keys() and len(reference) >= 6
    for key, value in reference.items():
        # prior draws are seeded by epoch (1 vs 0 for validate); staleness counts epochs
        if key.endswith(("/seconds", "/prior", "/staleness")):
            continue
        # float32 decoders: a rank's shard runs in other batch shapes, so the last bits of a
        # value move (the dip, a small difference of two log densities of about 1, by ~5e-9)
        assert distributed[key] == pytest.approx(value, rel=1e-6, abs=1e-7, nan_ok=True), key


def probe_of_one() -> list:
    """Every monitor that shards its probe, on a probe of one sample per split."""
    return [
        GeometryMonitor(encoder="encode", probe_size=1, max_overhead=math.inf, radii=(0.1, 0.2)),
        RecoveryMonitor(encoder="encode", probe_size=1, steps=5, max_overhead=math.inf),
        LikelihoodMonitor(encoder="encode", probe_size=1, max_overhead=math.inf),
    ]


def test_a_probe_smaller_than_the_number_of_ranks_leaves_a_rank_empty_and_measures():
    """Probe 1 on 2 ranks: rank 1 has no sample of its own; the metrics still equal one
    process's, and nobody waits alone in a collective. Before: LikelihoodMonitor failed on the
    empty rank (``cannot reshape tensor of 0 elements into shape [8, 0, -1]``)."""
    monitors = probe_of_one()
    L.seed_everything(0, verbose=False)
    model = make_autoencoder(dropout=0.0)
    ddp = quiet_trainer(
        callbacks=monitors, max_epochs=1, strategy="ddp_spawn", devices=2, num_sanity_val_steps=0
    )
    ddp.fit(model, datamodule=DigitsDataModule())
    distributed = memwatch_metrics(ddp)
    single = quiet_trainer(callbacks=probe_of_one())
    single.validate(model, datamodule=DigitsDataModule(), verbose=False)
    reference = memwatch_metrics(single)
    assert distributed.keys() == reference.keys()
    for key in (
        "memwatch/spectrum/log_volume/train",
        "memwatch/recovery/mre/val",
        "memwatch/likelihood/train",
        "memwatch/likelihood/val",
    ):
        assert math.isfinite(reference[key])
    for key, value in reference.items():
        if key.endswith(("/seconds", "/prior", "/staleness")):
            continue
        # float32 decoders: a rank's shard runs in other batch shapes, so the last bits of a
        # value move (the dip, a small difference of two log densities of about 1, by ~5e-9)
        assert distributed[key] == pytest.approx(value, rel=1e-6, abs=1e-7, nan_ok=True), key
