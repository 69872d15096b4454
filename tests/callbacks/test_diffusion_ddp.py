"""DiffusionMonitor under two CPU processes (``ddp_spawn``, gloo): the sharded probe and the
sharded generated samples give the single-process numbers."""

from __future__ import annotations

import math

import lightning as L
import pytest

from lightning_memwatch import DiffusionMonitor
from tests.callbacks.diffusion_models import DiffusionModule
from tests.callbacks.test_ddp import memwatch_metrics
from tests.conftest import DigitsDataModule, quiet_trainer


class ValidatedDiffusion(DiffusionModule):
    """A validation loop that does nothing, so that ``trainer.validate`` can run the monitor."""

    def validation_step(self, batch, batch_idx):
        return None


def make_monitor() -> DiffusionMonitor:
    return DiffusionMonitor(
        "net",
        "alphas_cumprod",
        "epsilon",
        probe_size=12,
        families=("loss", "spectrum", "samples"),
        num_generated=41,  # an odd count: the ranks generate 21 and 20
        cells=2,
        reference_size=48,
        max_overhead=math.inf,
        data_range=(0, 1),
    )


def test_ddp_metrics_equal_a_single_process_run():
    L.seed_everything(0, verbose=False)
    model = ValidatedDiffusion("own")
    ddp = quiet_trainer(
        callbacks=[make_monitor()],
        max_epochs=2,
        strategy="ddp_spawn",
        devices=2,
        num_sanity_val_steps=0,
    )
    ddp.fit(model, datamodule=DigitsDataModule())
    distributed = memwatch_metrics(ddp)
    # the same (trained, returned from rank 0) weights, one process, the same seeded probe
    single = quiet_trainer(callbacks=[make_monitor()])
    single.validate(model, datamodule=DigitsDataModule(), verbose=False)
    reference = memwatch_metrics(single)
    assert distributed.keys() == reference.keys() == make_monitor().logged_keys
    for key, value in reference.items():
        if key.endswith(("/seconds", "/staleness")):
            continue
        assert distributed[key] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), key
