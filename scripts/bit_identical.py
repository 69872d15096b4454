"""Training is bit-identical with and without every memwatch monitor, on one device.

    python scripts/bit_identical.py --device cuda                  # deterministic=True
    python scripts/bit_identical.py --device cuda --deterministic false
    python scripts/bit_identical.py --device cpu --quick           # a smoke run

Three fits of the demo VAE (``examples/digits_vae.py``, latent 8; 512 digits, 2 epochs,
probe 32; ``--quick``: 128 digits, probe 16) from one seed: without
monitors, with all of them (``GeometryMonitor`` with its spectrum and density families,
``RecoveryMonitor``, ``LikelihoodMonitor``, ``SampleMonitor``, ``EffectAgreement`` and a
report-only ``MemorizationEarlyStopping``, each measuring its whole probe every epoch), and
without again. Compared bit for bit: every training step's loss, every parameter and buffer
after the fit, and the global RNG states (the CPU's and every CUDA device's) after the fit.

``Trainer(deterministic=True)`` makes cuBLAS and cuDNN pick deterministic algorithms (and sets
``CUBLAS_WORKSPACE_CONFIG=:4096:8``): what lets two CUDA runs repeat bit for bit; an op with no
deterministic CUDA implementation raises, naming it. ``--deterministic false`` shows what a CUDA
run gives without it. Prints a markdown table; exits with status 1 when the run with monitors
differs from the run without.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from digits_vae import DigitsDataModule, DigitsVAE, quiet
from gpu_monitors import trainer

from lightning_memwatch import (
    EffectAgreement,
    GeometryMonitor,
    LikelihoodMonitor,
    MemorizationEarlyStopping,
    RecoveryMonitor,
    SampleMonitor,
)


class StepLosses(Callback):
    """Every training step's loss, as a Python float."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, *_: Any) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def monitors(probe: int) -> list[Callback]:
    """Every monitor, measuring its whole probe every epoch, and the rules that read them."""
    common = {"probe_size": probe, "max_overhead": math.inf}
    return [
        GeometryMonitor(encoder="encode", families=("spectrum", "density"), **common),
        RecoveryMonitor(encoder="encode", **common),
        LikelihoodMonitor(encoder="encode", **common),
        SampleMonitor(reference_size=4 * probe, num_generated=4 * probe, **common),
        EffectAgreement(),
        MemorizationEarlyStopping(
            "memwatch/agreement/bound", threshold=0.3, mode="above", report_only=True
        ),
    ]


def rng_states(device: torch.device) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states += torch.cuda.get_rng_state_all()
    return states


def fit(device: torch.device, deterministic: bool | str, callbacks: list[Callback], sizes: dict):
    """One seeded fit: its step losses, its final state (on the CPU), the RNG states after it."""
    losses = StepLosses()
    L.seed_everything(0, verbose=False)
    model = DigitsVAE(latent_dim=8)
    data = DigitsDataModule(sizes["n_train"], 256, 64, seed=0)
    fitted = trainer(
        device, sizes["epochs"], [*callbacks, losses], False, deterministic=deterministic
    )
    fitted.fit(model, datamodule=data)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return losses.losses, state, rng_states(device)


def compare(a: tuple, b: tuple) -> dict[str, Any]:
    (losses_a, state_a, rng_a), (losses_b, state_b, rng_b) = a, b
    differences = [abs(x - y) for x, y in zip(losses_a, losses_b, strict=False)]
    same_keys = state_a.keys() == state_b.keys()
    return {
        "steps": f"{len(losses_a)} / {len(losses_b)}",
        "losses": losses_a == losses_b,
        "parameters": same_keys and all(torch.equal(state_a[k], state_b[k]) for k in state_a),
        "rng": len(rng_a) == len(rng_b) and all(map(torch.equal, rng_a, rng_b)),
        "largest": max(differences, default=0.0),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--deterministic", choices=("true", "false", "warn"), default="true")
    parser.add_argument("--quick", action="store_true", help="128 digits, probe 16")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    deterministic = {"true": True, "false": False, "warn": "warn"}[args.deterministic]
    sizes = {"n_train": 128, "probe": 16} if args.quick else {"n_train": 512, "probe": 32}
    sizes["epochs"] = 2
    with quiet(torch.get_num_threads()):
        plain = fit(device, deterministic, [], sizes)
        watched = fit(device, deterministic, monitors(sizes["probe"]), sizes)
        again = fit(device, deterministic, [], sizes)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"\n{name}; torch {torch.__version__}; CUDA {torch.version.cuda or 'none'}; "
        f"deterministic={args.deterministic}; demo VAE, {sizes['n_train']} digits, "
        f"{sizes['epochs']} epochs, probe {sizes['probe']}\n"
    )
    print("| fits compared | steps | losses equal | parameters equal | RNG equal | largest |")
    print("|---|---:|---|---|---|---:|")
    rows = {
        "with every monitor vs without": compare(watched, plain),
        "without vs without (repeatability)": compare(again, plain),
    }
    for label, row in rows.items():
        print(
            f"| {label} | {row['steps']} | {row['losses']} | {row['parameters']} | "
            f"{row['rng']} | {row['largest']:.3g} |"
        )
    return rows


if __name__ == "__main__":
    result = main()["with every monitor vs without"]
    sys.exit(0 if result["losses"] and result["parameters"] and result["rng"] else 1)
