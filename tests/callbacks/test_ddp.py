"""Two CPU processes (``ddp_spawn``, gloo): the sharded probe gives the single-process numbers."""

from __future__ import annotations

import lightning as L
import pytest

from lightning_memwatch.callbacks import GeometryMonitor
from tests.conftest import DigitsDataModule, make_autoencoder, quiet_trainer


def monitor() -> GeometryMonitor:
    return GeometryMonitor(encoder="encode", probe_size=12, max_overhead=1.0, radii=(0.1, 0.2))


def test_ddp_metrics_equal_a_single_process_run_on_the_same_probe():
    L.seed_everything(0, verbose=False)
    model = make_autoencoder(dropout=0.0)
    ddp = quiet_trainer(
        callbacks=[monitor()], max_epochs=1, strategy="ddp_spawn", devices=2, num_sanity_val_steps=0
    )
    ddp.fit(model, datamodule=DigitsDataModule())
    distributed = {
        k: v.item() for k, v in ddp.callback_metrics.items() if k.startswith("memwatch/")
    }

    # The same (trained, returned from rank 0) weights, one process, the same seeded probe.
    single = quiet_trainer(callbacks=[monitor()])
    single.validate(model, datamodule=DigitsDataModule(), verbose=False)
    reference = {
        k: v.item() for k, v in single.callback_metrics.items() if k.startswith("memwatch/")
    }

    assert distributed.keys() == reference.keys() and len(reference) > 20
    for key, value in reference.items():
        if key.endswith("/seconds"):
            continue
        assert distributed[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key
