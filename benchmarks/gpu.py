"""The package on one device: what runs "on the same GPU as training" costs there.

    python benchmarks/gpu.py --device cuda --out gpu_table.md   # a few minutes on one GPU
    python benchmarks/gpu.py --device cpu --quick               # a seconds-long smoke run

Every time is taken between ``torch.cuda.synchronize()`` calls on CUDA (best of ``--repeats``
after a warm-up, ``benchmarks/jacobian.py``'s ``best_time``); peak memory is
``torch.cuda.max_memory_allocated`` above the allocation at the start, on the CPU the
resident-set high-water mark above the resident set at the start. Four tables, under a header
that names the device, torch and CUDA:

1. **Spectrum vs its floor**: ``singular_values`` and ``jacobian`` on ``benchmarks/jacobian.py``'s
   MLP and conv decoders against one forward pass of ``B x m`` latents.
2. **Gram + eigen-solve, float64 vs float32**: on float32 Jacobians ``U diag(s) V^T`` with
   ``s`` from 1 down to ``1e-4`` (condition 1e4), four ways from ``J`` to ``s``: the package's
   float64 Gram + ``eigvalsh``, a float32 Gram + ``eigvalsh``, a float32 Householder QR of ``J``
   then float64 or float32 ``svdvals`` of the ``m x m`` factor ``R``; seconds and the error of
   the smallest value against a float64 SVD of the same float32 ``J``. The device's float64 /
   float32 matrix-product rate is measured beside it, and the lines under the table name the
   fastest way that keeps every value within ``1e-5 s_1`` and ``s_m`` within 1%: the
   per-device choice.
3. **Recovery, batched vs per image**: ``benchmarks/recovery.py``'s problem (128 targets),
   ``recover_latents`` on all of them against Webster et al.'s one L-BFGS per image, the loop
   timed on the first 16 targets (``--quick``: 4 targets, 1 timed) and scaled.
4. **A whole measurement vs one training epoch** (``benchmarks/gpu_monitors.py``): each monitor
   of the demo VAE, the DCGAN and, where ``lightning_memwatch.DiffusionMonitor`` exists, a DDPM.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

import gpu_monitors
import lightning
import recovery
from digits_vae import quiet
from jacobian import CASES, best_time, floor_pass, sync

from lightning_memwatch.functional import jacobian, singular_values
from lightning_memwatch.functional.spectrum import gram_singular_values

MIB = 2**20
CONDITION = 1e4


class Sizes(NamedTuple):
    """How big each part is: ``FULL`` for the device, ``QUICK`` for a smoke run."""

    spectrum_batch: int | None  # None: benchmarks/jacobian.py's batch of each decoder
    gram_shapes: tuple[tuple[int, int, int], ...]  # (B, n, m)
    matmul: int
    targets: int
    loop_targets: int
    monitors: gpu_monitors.Scale


FULL = Sizes(None, ((256, 784, 32), (64, 784, 128)), 4096, 128, 16, gpu_monitors.FULL)
QUICK = Sizes(4, ((4, 784, 32),), 256, 4, 1, gpu_monitors.QUICK)


class Report:
    """Markdown lines, printed as they come, kept, and written to ``out`` as they come (so a
    run stopped at a time limit leaves the tables it finished)."""

    def __init__(self, out: Path | None = None) -> None:
        self.lines: list[str] = []
        self.out = out
        if out is not None:
            out.write_text("")

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)
            if self.out is not None:
                with self.out.open("a") as handle:
                    handle.write(line + "\n")

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        self.add("", f"### {title}", "", "| " + " | ".join(header) + " |")
        self.add("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        self.add(*("| " + " | ".join(row) + " |" for row in rows))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return platform.processor() or "CPU"


def timed_peak(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory (bytes above the start) of one call of ``fn``."""
    meter = gpu_monitors.Meter(device)
    meter(fn)
    return meter.records[-1][1]


def spectrum_row(name: str, batch: int, device: torch.device, repeats: int) -> list[str]:
    """One of ``benchmarks/jacobian.py``'s decoders: floor, spectrum, Jacobian, peak memory."""
    build, m, _ = CASES[name]
    torch.manual_seed(0)
    f = build(m).to(device).eval()
    z = torch.randn(batch, m).to(device)
    floor = best_time(lambda: floor_pass(f, z), device, repeats)
    spectrum = best_time(lambda: singular_values(f, z), device, repeats)
    jac = best_time(lambda: jacobian(f, z), device, repeats)
    peak = timed_peak(lambda: singular_values(f, z), device)
    return [
        f"{name} decoder B={batch} m={m} n={f(z[:1]).numel()}",
        f"{floor:.4f}",
        f"{spectrum:.4f}",
        f"{spectrum / floor:.2f}",
        f"{jac / floor:.2f}",
        f"{peak / MIB:.1f}",
    ]


def conditioned_jacobians(batch: int, n: int, m: int, device: torch.device) -> torch.Tensor:
    """``(B, n, m)`` float32 ``U_b diag(s) V_b^T``, ``s`` geometric from 1 to ``1/CONDITION``,
    ``U_b``, ``V_b`` orthonormal (float64 QR of Gaussians drawn on the CPU)."""
    generator = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(batch, n, m, generator=generator, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(batch, m, m, generator=generator, dtype=torch.float64)).Q
    s = torch.logspace(0, -torch.log10(torch.tensor(CONDITION)).item(), m, dtype=torch.float64)
    return ((u * s) @ v.mT).float().to(device)


def float32_gram(jac: torch.Tensor) -> torch.Tensor:
    gram = jac.mT @ jac
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(-1)


def qr_then(dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    def spectrum(jac: torch.Tensor) -> torch.Tensor:
        r = torch.linalg.qr(jac, mode="r")[1]
        return torch.linalg.svdvals(r.to(dtype))

    return spectrum


GRAM_METHODS = {
    "float64 Gram + eigvalsh (the package)": gram_singular_values,
    "float32 Gram + eigvalsh": float32_gram,
    "float32 QR of J + float64 svdvals(R)": qr_then(torch.float64),
    "float32 QR of J + float32 svdvals(R)": qr_then(torch.float32),
}


#: The accuracy a way from J to s must keep: the tests' bound on every value (1e-5 s_1) and the
#: smallest value at condition 1e4 within 1% (kept, not lost in round-off).
TOP_TOLERANCE, SMALLEST_TOLERANCE = 1e-5, 1e-2


def gram_rows(device: torch.device, sizes: Sizes, repeats: int) -> tuple[list, list[str]]:
    rows, notes = [], []
    for batch, n, m in sizes.gram_shapes:
        jac = conditioned_jacobians(batch, n, m, device)
        truth = torch.linalg.svdvals(jac.cpu().double())  # float64 SVD of the float32 J
        results = {}
        for method, fn in GRAM_METHODS.items():
            seconds = best_time(lambda fn=fn, jac=jac: fn(jac), device, repeats)
            got = fn(jac).cpu().double()
            smallest = ((got[:, -1] - truth[:, -1]).abs() / truth[:, -1]).max().item()
            top = ((got - truth).abs() / truth[:, :1]).max().item()
            if top <= TOP_TOLERANCE and smallest <= SMALLEST_TOLERANCE:
                results[method] = seconds
            rows.append(
                [
                    f"{method}, B={batch} n={n} m={m}",
                    f"{seconds:.5f}",
                    f"{smallest:.1e}",
                    f"{top:.1e}",
                ]
            )
        choice = min(results, key=results.get) if results else "none of them"
        notes.append(
            f"- m = {m}: the fastest way that keeps every value within {TOP_TOLERANCE:g} s_1 and "
            f"s_m within {SMALLEST_TOLERANCE:.0%} on this device: **{choice}**"
        )
    return rows, notes


def matmul_rates(device: torch.device, size: int, repeats: int) -> dict[torch.dtype, float]:
    """GFLOP/s of a square ``size x size`` matrix product in float32 (TF32 off) and float64."""
    rates = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for dtype in (torch.float32, torch.float64):
            a = torch.randn(size, size, dtype=dtype).to(device)
            seconds = best_time(lambda a=a: a @ a, device, repeats)
            rates[dtype] = 2 * size**3 / seconds / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return rates


def recovery_rows(device: torch.device, sizes: Sizes, repeats: int) -> list[list[str]]:
    decoder, x, floor = recovery.problem(device)
    x, loop_targets = x[: sizes.targets], sizes.loop_targets
    batched = best_time(lambda: recovery.batched_recovery(decoder, x), device, repeats)
    errors = recovery.batched_recovery(decoder, x)[1]
    starts = recovery.loop_starts()[:, :loop_targets].to(device)
    sync(device)
    loop = best_time(
        lambda: recovery.webster_loop(decoder, x[:loop_targets], starts), device, repeats=1
    )
    loop_errors = recovery.webster_loop(decoder, x[:loop_targets], starts)[1]
    scaled = loop * len(x) / loop_targets
    return [
        [
            f"recover_latents, batched ({len(x)} targets)",
            f"{batched:.2f}",
            f"{errors.median().item():.3e}",
            f"{(errors < 1.1 * floor).double().mean().item():.0%}",
            f"{scaled / batched:.1f}x",
        ],
        [
            f"one L-BFGS per image ({loop_targets} timed, x {len(x) / loop_targets:g})",
            f"{scaled:.2f}",
            f"{loop_errors.median().item():.3e}",
            f"{(loop_errors < 1.1 * floor).double().mean().item():.0%}",
            "1.0x",
        ],
    ]


def monitor_rows(device: torch.device, scale: gpu_monitors.Scale, seed: int) -> tuple[list, str]:
    cases, status = gpu_monitors.cases(scale)
    epochs, probe = scale.epochs, scale.probe
    rows = []
    for case in cases:
        try:
            with quiet(torch.get_num_threads()):
                got = gpu_monitors.measure_case(case, device, scale, seed)
        except Exception as error:  # a model or monitor that fails here is reported, not fatal
            rows.append([case.name, "failed", f"{type(error).__name__}: {error}"[:200], *[""] * 4])
            continue
        epoch = gpu_monitors.later([s for s, _ in got["epochs"]])
        epoch_peak = max(p for _, p in got["epochs"])
        rows.append(
            [
                f"{case.name}: one epoch",
                f"{epoch:.3f}",
                "",
                "1.00",
                "",
                f"{epoch_peak / MIB:.1f}",
                "",
            ]
        )
        for label, records in got["monitors"].items():
            seconds = [s for s, _ in records]
            later = gpu_monitors.later(seconds)
            peak = max((p for _, p in records), default=0)
            rows.append(
                [
                    f"{case.name}: {label}",
                    f"{later:.3f}",
                    f"{seconds[0]:.3f}" if seconds else "-",
                    f"{later / epoch:.2f}",
                    f"{len(seconds)} of {epochs}",
                    f"{peak / MIB:.1f}",
                    str(probe),
                ]
            )
    return rows, status


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    repeats, sizes = (1, QUICK) if args.quick else (args.repeats, FULL)
    report = Report(args.out)
    report.add(
        f"## {device_name(device)}",
        "",
        f"device {device}; torch {torch.__version__}; CUDA {torch.version.cuda or 'none'}; "
        f"lightning {lightning.__version__}; {'quick' if args.quick else 'full'} run",
    )
    report.table(
        "Spectrum vs its floor (one forward of B x m latents)",
        ["decoder", "floor (s)", "singular_values (s)", "x floor", "jacobian x floor", "peak MiB"],
        [
            spectrum_row(name, sizes.spectrum_batch or batch, device, repeats)
            for name, (_, _, batch) in CASES.items()
        ],
    )
    rows, notes = gram_rows(device, sizes, repeats)
    rates = matmul_rates(device, sizes.matmul, repeats)
    report.table(
        f"From J to s at condition {CONDITION:.0e}: float64 vs float32",
        ["method", "seconds", "s_m relative error", "max error / s_1"],
        rows,
    )
    report.add(
        "",
        f"- {sizes.matmul}-square matrix product: float32 {rates[torch.float32]:.1f} GFLOP/s, "
        f"float64 {rates[torch.float64]:.1f} GFLOP/s (float64 at 1/"
        f"{rates[torch.float32] / rates[torch.float64]:.1f} of float32)",
        *notes,
    )
    report.table(
        "Latent recovery: batched vs one L-BFGS per image",
        ["method", "seconds", "median error", "within 10% of floor", "speed-up"],
        recovery_rows(device, sizes, repeats),
    )
    rows, status = monitor_rows(device, sizes.monitors, args.seed)
    report.table(
        "A whole measurement vs one training epoch (max_overhead=inf"
        + (", no logger)" if sizes.monitors.light else ", TensorBoard artifacts written)"),
        ["model: what", "seconds", "first (s)", "x epoch", "measured", "peak MiB", "probe"],
        rows,
    )
    report.add("", f"- DDPM with DiffusionMonitor: {status}")
    return report.lines


if __name__ == "__main__":
    main()
