"""The test-device switch of ``tests/conftest.py``: the device ``MEMWATCH_TEST_DEVICE`` names,
the Trainer options it gives, which tests it deselects, and a real collection and run under a
CUDA setting on a machine that may have no GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.callbacks import test_early_stopping as early_stopping
from tests.conftest import quiet_trainer
from tests.devices import (
    DEVICE,
    DEVICE_VARIABLE,
    accelerator_for,
    device_from_environment,
    split_cpu_only,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_variable_names_the_device_and_unset_is_the_cpu():
    assert device_from_environment({}) == torch.device("cpu")
    assert device_from_environment({DEVICE_VARIABLE: "  "}) == torch.device("cpu")
    assert device_from_environment({DEVICE_VARIABLE: "cuda"}) == torch.device("cuda")
    assert device_from_environment({DEVICE_VARIABLE: "cuda:1"}) == torch.device("cuda", 1)
    with pytest.raises(pytest.UsageError, match=r"MEMWATCH_TEST_DEVICE='gpu0' is not a torch"):
        device_from_environment({DEVICE_VARIABLE: "gpu0"})


def test_trainer_options_per_device():
    assert accelerator_for(torch.device("cpu")) == {"accelerator": "cpu", "devices": 1}
    cuda = {"accelerator": "gpu", "devices": 1, "deterministic": "warn"}
    assert accelerator_for(torch.device("cuda")) == cuda
    assert accelerator_for(torch.device("cuda", 1)) == {**cuda, "devices": [1]}
    with pytest.raises(ValueError, match="cpu, cuda, mps to train on but got meta"):
        accelerator_for(torch.device("meta"))


def test_quiet_trainer_trains_on_the_test_device():
    trainer = quiet_trainer()
    assert trainer.strategy.root_device.type == DEVICE.type
    expected = {"cpu": "CPUAccelerator", "cuda": "CUDAAccelerator"}[DEVICE.type]
    assert type(trainer.accelerator).__name__ == expected


def item(marker=None, nodeid: str = "tests/x.py::test_x") -> SimpleNamespace:
    """A stand-in for a collected test: its node id and its closest ``cpu_only`` marker."""
    mark = None if marker is None else marker.mark
    return SimpleNamespace(nodeid=nodeid, get_closest_marker=lambda name: mark)


def test_cpu_only_tests_are_deselected_on_cuda_only():
    marked, positional, plain = (
        item(pytest.mark.cpu_only(reason="ddp_spawn with gloo")),
        item(pytest.mark.cpu_only("bit-identical CPU training")),
        item(),
    )
    everything = [marked, positional, plain]
    assert split_cpu_only(everything, torch.device("cpu")) == (everything, [])
    assert split_cpu_only(everything, torch.device("cuda")) == ([plain], [marked, positional])


@pytest.mark.parametrize("marker", [pytest.mark.cpu_only, pytest.mark.cpu_only(reason=" ")])
def test_a_cpu_only_marker_without_a_reason_is_a_usage_error_on_every_device(marker):
    for device in ("cpu", "cuda"):
        with pytest.raises(pytest.UsageError, match=r"tests/x.py::test_x: .*needs reason="):
            split_cpu_only([item(marker)], torch.device(device))


def test_the_marker_is_registered_and_used_with_its_reason(request):
    assert any(line.startswith("cpu_only(reason)") for line in request.config.getini("markers"))
    (mark,) = early_stopping.test_ddp_ranks_stop_together.pytestmark  # a module: not collected
    assert mark.name == "cpu_only" and "gloo" in mark.kwargs["reason"]


def run_pytest(*args: str, device: str) -> subprocess.CompletedProcess:
    env = {**os.environ, DEVICE_VARIABLE: device}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_a_cuda_collection_deselects_the_marked_test_and_keeps_the_rest():
    """``--collect-only`` needs no GPU: under ``cuda`` the DDP test is deselected, the others of
    its file are collected, and the header names the device."""
    done = run_pytest("--collect-only", "tests/callbacks/test_early_stopping.py", device="cuda")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "memwatch test device: cuda" in done.stdout
    assert "test_ddp_ranks_stop_together" not in done.stdout
    assert "test_stops_at_expected_epoch" in done.stdout and "1 deselected" in done.stdout


def test_a_cuda_run_without_a_gpu_stops_at_once_saying_why():
    done = run_pytest("tests/functional/test_stats.py", device="cuda")
    if torch.cuda.is_available():  # a machine with a GPU runs them there
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        assert done.returncode == 2, done.stdout + done.stderr
        assert "MEMWATCH_TEST_DEVICE=cuda but torch.cuda.is_available() is False" in done.stdout
