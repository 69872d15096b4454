"""``benchmarks/gpu.py --device cpu --quick`` prints every table with every row; its pieces
against references written here (the chosen spectrum of its Jacobians by numpy, the grouping
of a monitor's hooks by epoch); ``scripts/bit_identical.py``'s smoke run on the CPU."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lightning_memwatch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu():
    for folder in (ROOT / "benchmarks", ROOT / "scripts"):
        sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("gpu")
    finally:
        for folder in (ROOT / "benchmarks", ROOT / "scripts"):
            sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def quick(gpu, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "table.md"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        lines = gpu.main(["--device", "cpu", "--quick", "--out", str(out)])
    return out.read_text(), lines, printed.getvalue()


def rows(text: str) -> dict[str, list[str]]:
    """Every markdown table row by its first cell (header and rule rows left out)."""
    lines = text.splitlines()
    found = {}
    for line, after in zip(lines, [*lines[1:], ""], strict=True):
        if line.startswith("| ") and not after.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            found[cells[0]] = cells[1:]
    return found


def test_the_table_names_the_device_and_versions_and_goes_to_out(quick):
    text, lines, printed = quick
    assert text == "\n".join(lines) + "\n" and printed.strip() == text.strip()
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1)
    assert lines[0].startswith(f"## {model.strip()}")
    assert f"torch {torch.__version__}; CUDA none;" in text and "quick run" in text


def test_every_row_is_there_with_numbers(gpu, quick):
    text = quick[0]
    got = rows(text)
    vae, dcgan, ddpm = (
        "demo VAE (latent 8)",
        "DCGAN (latent 100, width 8)",
        "DDPM (UNet2DModel, T=200)",
    )
    expected = [
        "mlp decoder B=4 m=32 n=784",
        "conv decoder B=4 m=64 n=784",
        *(f"{method}, B=4 n=784 m=32" for method in gpu.GRAM_METHODS),
        "recover_latents, batched (4 targets)",
        "one L-BFGS per image (1 timed, x 4)",
        *(f"{vae}: {m}" for m in ("one epoch", "GeometryMonitor", "RecoveryMonitor")),
        f"{vae}: LikelihoodMonitor",
        *(f"{dcgan}: {m}" for m in ("one epoch", "GeometryMonitor (top_k=4)", "RecoveryMonitor")),
    ]
    diffusers = importlib.util.find_spec("diffusers") is not None  # an optional extra
    diffusion = diffusers and hasattr(lightning_memwatch, "DiffusionMonitor")
    expected += [f"{ddpm}: one epoch"] if diffusers else []
    expected += [f"{ddpm}: DiffusionMonitor"] if diffusion else []
    assert sorted(got) == sorted(expected)
    for name, cells in got.items():
        assert float(cells[0]) > 0, name  # seconds, never "failed"
        if ": " in name and not name.endswith("one epoch"):
            assert cells[3] == "2 of 2", name  # measured at both epochs
    assert ("present" if diffusion else "absent") in text.splitlines()[-1]
    assert "matrix product: float32" in text and "on this device: **" in text


def test_the_float32_gram_loses_the_smallest_value_and_the_others_keep_it(gpu, quick):
    got = rows(quick[0])
    error = {m: float(got[f"{m}, B=4 n=784 m=32"][1]) for m in gpu.GRAM_METHODS}
    assert error["float64 Gram + eigvalsh (the package)"] < 1e-6
    assert error["float32 Gram + eigvalsh"] > 0.5  # s_m^2 = 1e-8 s_1^2: below float32 rounding
    assert error["float32 QR of J + float64 svdvals(R)"] < 1e-3
    assert error["float32 QR of J + float32 svdvals(R)"] < 1e-3


def test_conditioned_jacobians_have_the_chosen_spectrum(gpu):
    jac = gpu.conditioned_jacobians(3, 50, 8, torch.device("cpu"))
    assert jac.dtype == torch.float32 and jac.shape == (3, 50, 8)
    s = np.linalg.svd(jac.double().numpy(), compute_uv=False)
    chosen = np.geomspace(1.0, 1.0 / gpu.CONDITION, 8)
    np.testing.assert_allclose(s, np.broadcast_to(chosen, (3, 8)), rtol=0, atol=1e-6)
    assert not np.allclose(jac[0].numpy(), jac[1].numpy())  # each point its own U, V


def test_a_monitors_hooks_are_grouped_by_epoch(gpu):
    meter = gpu.gpu_monitors.Meter(torch.device("cpu"))
    meter.records = [(1.0, 10), (2.0, 5), (0.5, 7)]
    meter.marks = [0, 2]
    assert gpu.gpu_monitors.per_epoch_records(meter) == [(3.0, 10), (0.5, 7)]
    meter.marks = [0, 0, 2]  # an epoch without a measurement adds no row
    assert gpu.gpu_monitors.per_epoch_records(meter) == [(3.0, 10), (0.5, 7)]
    seconds = meter(lambda: torch.ones(1000).sum())
    assert seconds >= 0 and meter.records[-1][1] >= 0


def test_bit_identical_smoke_run_on_the_cpu(gpu):
    bit_identical = importlib.import_module("bit_identical")
    with contextlib.redirect_stdout(io.StringIO()):
        got = bit_identical.main(["--device", "cpu", "--quick"])
    for label, row in got.items():
        assert row["losses"] and row["parameters"] and row["rng"], label
        assert row["steps"] == "4 / 4" and row["largest"] == 0.0


def test_the_ddpm_case_says_what_is_missing(gpu, monkeypatch):
    monitors = gpu.gpu_monitors
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed
    case, status = monitors.diffusion_case(monitors.QUICK)
    assert case is None and status.startswith("absent: diffusers does not import")
    monkeypatch.undo()
    monkeypatch.delattr(lightning_memwatch, "DiffusionMonitor", raising=False)
    if importlib.util.find_spec("diffusers") is not None:
        case, status = monitors.diffusion_case(monitors.QUICK)
        assert status == "absent: no lightning_memwatch.DiffusionMonitor here"
        assert case.monitors(4) == {}  # the DDPM's epoch is still timed, with no monitor
