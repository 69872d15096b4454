"""Jacobian spectrum: the package against the alternatives, side by side in one run.

    python benchmarks/jacobian.py            # both cases, CPU (or CUDA when available)
    python benchmarks/jacobian.py --quick    # smaller batches, for a smoke run

For each decoder it prints seconds (best of ``--repeats``) and the ratio to the floor, the
floor being one forward pass of ``B * m`` latents (the work any Jacobian needs at least):

- ``memwatch singular_values``: the package (vmap over tangents of jvp, float64 Gram + eigvalsh);
- ``memwatch jacobian``: the package's Jacobian alone;
- the package's Jacobian + float32 QR + float64 SVD of the ``m x m`` factor;
- ``vmap(jacfwd)`` + the same float64 eigen-solve;
- float32 central finite differences + the same eigen-solve, with its singular-value error;
- a per-point ``torch.autograd.functional.jacobian`` loop (timed on a subset, scaled to ``B``).

Then peak memory of ``singular_values`` for two chunk sizes (a fresh subprocess each; on CPU
the kernel's resident-set high-water mark, reset through ``/proc/self/clear_refs``, above the
warmed-up resident set; ``torch.cuda.max_memory_allocated`` on CUDA), next to
the size of the whole ``B x n x m`` Jacobian: memory is bounded by the chunk, not by ``B``.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_memwatch.functional import jacobian, singular_values
from lightning_memwatch.functional.spectrum import gram_singular_values

TARGET_FLOOR_RATIO = 1.25
TARGET_LOOP_SPEEDUP = 100.0


def mlp_decoder(m: int = 32) -> nn.Module:
    """A VAE-style MLP decoder to 784 outputs (28 x 28 flattened)."""
    return nn.Sequential(
        nn.Linear(m, 256),
        nn.Tanh(),
        nn.Linear(256, 512),
        nn.Tanh(),
        nn.Linear(512, 784),
        nn.Sigmoid(),
    )


class ConvDecoder(nn.Module):
    """A DCGAN-style decoder from ``m`` latents to 1 x 28 x 28 images."""

    def __init__(self, m: int = 64) -> None:
        super().__init__()
        self.fc = nn.Linear(m, 64 * 7 * 7)
        self.up1 = nn.ConvTranspose2d(64, 32, kernel_size=4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(32, 1, kernel_size=4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(z)).reshape(-1, 64, 7, 7)
        return torch.sigmoid(self.up2(torch.relu(self.up1(h))))


CASES = {
    "mlp": (mlp_decoder, 32, 256),
    "conv": (ConvDecoder, 64, 128),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def floor_pass(f: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """One forward pass of B * m latents: the floor for any Jacobian."""
    with torch.no_grad():
        return f(z.repeat_interleave(z.shape[1], dim=0))


def jacfwd_spectrum(f: nn.Module, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        jac = torch.func.vmap(torch.func.jacfwd(lambda x: f(x[None]).reshape(-1)))(z)
    return gram_singular_values(jac)


def qr_spectrum(f: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The float32 QR candidate: float32 Householder QR of J, float64 SVD of the m x m factor."""
    r = torch.linalg.qr(jacobian(f, z), mode="r")[1]
    return torch.linalg.svdvals(r.to(torch.float64))


def finite_difference_spectrum(f: nn.Module, z: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    batch, m = z.shape
    step = eps * torch.eye(m, dtype=z.dtype, device=z.device)
    plus = (z[:, None, :] + step).reshape(-1, m)
    minus = (z[:, None, :] - step).reshape(-1, m)
    with torch.no_grad():
        diff = (f(plus) - f(minus)).reshape(batch, m, -1) / (2 * eps)
    return gram_singular_values(diff.transpose(1, 2))


def autograd_loop_time(f: nn.Module, z: torch.Tensor, points: int, device: torch.device) -> float:
    """Seconds for the per-point reverse-mode loop, measured on ``points`` points, scaled to B."""

    def run() -> None:
        for zi in z[:points]:
            torch.autograd.functional.jacobian(lambda x: f(x[None]).reshape(-1), zi)

    return best_time(run, device, repeats=1) * z.shape[0] / points


def peak_memory_child(case: str, batch: int, chunk: int, device: str) -> None:
    """Run in a subprocess: print the peak memory singular_values adds above a warm baseline."""
    torch.manual_seed(0)
    build, m, _ = CASES[case]
    f = build(m).to(device).eval()
    z = torch.randn(batch, m, device=device)
    singular_values(f, z[:2], chunk_size=2)  # warm up the kernels and the allocator
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        singular_values(f, z, chunk_size=chunk)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = reset_peak_rss()
        singular_values(f, z, chunk_size=chunk)
        peak = peak_rss() - base
    print(json.dumps({"peak_bytes": peak}))


def reset_peak_rss() -> int:
    """Reset the kernel's resident-set high-water mark (Linux) and return the current RSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_bytes("VmRSS")


def peak_rss() -> int:
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(case: str, batch: int, chunk: int, device: torch.device) -> float:
    cmd = [sys.executable, __file__, "--peak-child", case, str(batch), str(chunk), device.type]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def run_case(name: str, batch: int, device: torch.device, repeats: int, loop_points: int) -> dict:
    torch.manual_seed(0)
    build, m, _ = CASES[name]
    f = build(m).to(device).eval()
    z = torch.randn(batch, m, device=device)
    n = f(z[:1]).numel()
    reference = singular_values(copy.deepcopy(f).double(), z.double())
    fd = finite_difference_spectrum(f, z)
    timings = {
        "floor (forward of B*m latents)": best_time(lambda: floor_pass(f, z), device, repeats),
        "memwatch singular_values": best_time(lambda: singular_values(f, z), device, repeats),
        "memwatch jacobian": best_time(lambda: jacobian(f, z), device, repeats),
        "memwatch jacobian + float32 QR + float64 svdvals(R)": best_time(
            lambda: qr_spectrum(f, z), device, repeats
        ),
        "vmap(jacfwd) + eigvalsh": best_time(lambda: jacfwd_spectrum(f, z), device, repeats),
        "float32 central differences + eigvalsh": best_time(
            lambda: finite_difference_spectrum(f, z), device, repeats
        ),
        f"autograd.functional.jacobian loop ({loop_points} pts, x B)": autograd_loop_time(
            f, z, loop_points, device
        ),
    }
    s1 = reference[:, :1]
    errors = {
        "memwatch singular_values": ((singular_values(f, z) - reference).abs() / s1).max().item(),
        "memwatch jacobian + float32 QR + float64 svdvals(R)": (
            (qr_spectrum(f, z) - reference).abs() / s1
        )
        .max()
        .item(),
        "float32 central differences + eigvalsh": ((fd - reference).abs() / s1).max().item(),
    }
    return {"name": name, "batch": batch, "m": m, "n": n, "timings": timings, "errors": errors}


def print_case(result: dict) -> tuple[float, float]:
    timings, errors = result["timings"], result["errors"]
    floor = timings["floor (forward of B*m latents)"]
    print(
        f"\n### {result['name']} decoder: B={result['batch']}, m={result['m']}, n={result['n']}\n"
    )
    print("| method | seconds | x floor | max abs error / s_1 (vs float64) |")
    print("|---|---:|---:|---:|")
    for method, seconds in timings.items():
        err = errors.get(method)
        err_text = f"{err:.1e}" if err is not None else ""
        print(f"| {method} | {seconds:.4f} | {seconds / floor:.2f} | {err_text} |")
    package = timings["memwatch singular_values"]
    loop = next(v for k, v in timings.items() if k.startswith("autograd"))
    return package / floor, loop / package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches, one repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        case, batch, chunk, device = args.peak_child
        peak_memory_child(case, int(batch), int(chunk), device)
        return
    device = torch.device(args.device)
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    verdicts = []
    for name, (_, _, batch) in CASES.items():
        batch = 16 if args.quick else batch
        result = run_case(name, batch, device, repeats, loop_points=2 if args.quick else 8)
        floor_ratio, speedup = print_case(result)
        verdicts.append((name, floor_ratio, speedup))

    mem_batch, chunks = (64, (4, 16)) if args.quick else (1024, (32, 256))
    print(f"\n### peak memory of singular_values, mlp decoder, B={mem_batch}\n")
    full = mem_batch * 784 * 32 * 4
    print(f"whole Jacobian B x n x m float32: {full / 2**20:.1f} MiB\n")
    print("| chunk_size | chunk Jacobian (MiB) | peak above baseline (MiB) |")
    print("|---:|---:|---:|")
    for chunk in chunks:
        peak = peak_memory("mlp", mem_batch, chunk, device)
        print(f"| {chunk} | {chunk * 784 * 32 * 4 / 2**20:.1f} | {peak / 2**20:.1f} |")

    print("\n### targets\n")
    for name, floor_ratio, speedup in verdicts:
        ok_floor = "met" if floor_ratio <= TARGET_FLOOR_RATIO else "MISSED"
        ok_loop = "met" if speedup >= TARGET_LOOP_SPEEDUP else "MISSED"
        print(
            f"- {name}: {floor_ratio:.2f}x floor (target <= {TARGET_FLOOR_RATIO}: {ok_floor}); "
            f"{speedup:.0f}x faster than the per-point loop (target >= {TARGET_LOOP_SPEEDUP:.0f}: "
            f"{ok_loop})"
        )


if __name__ == "__main__":
    main()
