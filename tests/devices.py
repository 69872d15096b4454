"""The test device: ``MEMWATCH_TEST_DEVICE`` (a ``torch.device`` string; unset: the CPU) names
where the converted tests put their inputs and modules and where :func:`accelerator_for`'s
``Trainer`` options train. ``tests/conftest.py`` holds the pytest hooks that use it (the
``cpu_only`` deselection, the report header, the device check) and re-exports these names.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping

import pytest
import torch
from torch import nn

#: The environment variable that names the test device (a ``torch.device`` string).
DEVICE_VARIABLE = "MEMWATCH_TEST_DEVICE"
#: Lightning's accelerator for each device type the tests can run on.
ACCELERATORS = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}
#: CUDA's deterministic cuBLAS workspace (what ``Trainer(deterministic=True)`` sets), set before
#: the first cuBLAS call so that every handle of the test process gets it.
CUBLAS_WORKSPACE = ":4096:8"


def device_from_environment(environ: Mapping[str, str]) -> torch.device:
    """The device that ``MEMWATCH_TEST_DEVICE`` names (unset or empty: the CPU)."""
    name = environ.get(DEVICE_VARIABLE, "").strip() or "cpu"
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise pytest.UsageError(
            f"{DEVICE_VARIABLE}={name!r} is not a torch device ({error}): use cpu or cuda"
        ) from error


def accelerator_for(device: torch.device) -> dict[str, object]:
    """``Trainer`` options that train on ``device``: the accelerator, the device index, and on
    CUDA ``deterministic="warn"`` (deterministic algorithms, a warning where an op has none), the
    setting under which CUDA training is bit-identical from run to run."""
    if device.type not in ACCELERATORS:
        raise ValueError(
            f"Expected a {DEVICE_VARIABLE} of type {', '.join(ACCELERATORS)} to train on but got "
            f"{device}"
        )
    options: dict[str, object] = {"accelerator": ACCELERATORS[device.type]}
    options["devices"] = [device.index] if device.index is not None else 1
    if device.type == "cuda":
        options["deterministic"] = "warn"
    return options


def cpu_only_reason(item: pytest.Item) -> str | None:
    """The reason of a test's ``cpu_only`` marker (``None``: not marked); a marker without one
    is a usage error, on every device."""
    marker = item.get_closest_marker("cpu_only")
    if marker is None:
        return None
    reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
    if not isinstance(reason, str) or not reason.strip():
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.cpu_only needs reason=... (why it cannot run on CUDA)"
        )
    return reason


def split_cpu_only(
    items: Iterable[pytest.Item], device: torch.device
) -> tuple[list[pytest.Item], list[pytest.Item]]:
    """``(kept, deselected)``: on a device other than the CPU, the tests marked ``cpu_only``
    are deselected; on the CPU every test is kept."""
    kept, deselected = [], []
    for item in items:
        marked = cpu_only_reason(item) is not None
        (deselected if marked and device.type != "cpu" else kept).append(item)
    return kept, deselected


DEVICE = device_from_environment(os.environ)
if DEVICE.type == "cuda":
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def on_device(values: object) -> torch.Tensor:
    """``values`` (a tensor, an array, a list) as a tensor on the test device, dtype kept."""
    return torch.as_tensor(values, device=DEVICE)


def device_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on the test device (the original stays where it is, for references
    computed on the CPU)."""
    return copy.deepcopy(module).to(DEVICE)


def rng_states() -> list[torch.Tensor]:
    """The global RNG streams a callback must leave alone: the CPU's, and on a CUDA test device
    every CUDA device's."""
    states = [torch.get_rng_state()]
    if DEVICE.type == "cuda":
        states += torch.cuda.get_rng_state_all()
    return states


def same_rng_states(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    return len(before) == len(after) and all(map(torch.equal, before, after))
