"""Cost of ``singular_values`` as the latent size m and the output size n grow: exact and top-k.

    python benchmarks/scaling.py                 # full sweep: a few minutes on 2 CPU cores
    python benchmarks/scaling.py --quick         # fewer sizes and points, for a smoke run
    python benchmarks/scaling.py --device cuda   # the same tables on a GPU

For an MLP and a conv decoder of fixed width, per probe point, side by side in one run: seconds
(best of ``--repeats``) of ``singular_values(f, z)`` (exact) and ``singular_values(f, z,
top_k=32)`` (and of ``top_singular_values(..., iterations=2)``, the ``q=2`` columns); the floor
of each, one forward pass without autograd of the points it pushes through the decoder (``B m``
for exact, ``B (2q + 1) l`` for top-k: ``(q + 1) l`` jvps and ``q l`` vjps, ``l = k + 8``,
``q = 1``); peak tensor memory with the batch in one chunk (CPU: allocator events from
``torch.profiler``; CUDA: ``max_memory_allocated``) beside the bound ``L (12 n + 8 m)`` bytes
of the Krylov images and bases (``L = (q + 1) l``; the rest is the decoder's activations for
``l`` tangents, also ``~ k + 8``); the top-k error against exact. Then the exponents of
``seconds ~ m^a n^b`` (least squares on logs; top-k over ``m >= 128``), the crossover size, and
the targets: top-k exponent in m below 0.3, and at m = 512 top-k (k = 32) >= 8x faster.

The exact path is skipped where its extrapolated time for one call exceeds ``--budget`` s.
Timings on a shared machine move with its load: compare within one run.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from lightning_memwatch.functional import singular_values, top_singular_values

K = 32
OVERSAMPLE = 8  # the defaults of functional.topk
ITERATIONS = 1
TARGET_EXPONENT = 0.3
TARGET_SPEEDUP = 8.0
HIDDEN = 256  # MLP width
CHANNELS = 32  # conv width


def mlp_decoder(m: int, shape: tuple[int, ...]) -> nn.Module:
    """Two hidden layers (256, 512) to ``prod(shape)`` sigmoid outputs."""
    n = math.prod(shape)
    return nn.Sequential(
        nn.Linear(m, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, 2 * HIDDEN),
        nn.Tanh(),
        nn.Linear(2 * HIDDEN, n),
        nn.Sigmoid(),
        nn.Unflatten(1, shape),
    )


class ConvDecoder(nn.Module):
    """DCGAN-style: ``m -> 32 x s x s`` (``s = 7`` for 28-pixel images, else 8), then stride-2
    transposed convolutions of 32 channels up to ``shape = (C, H, W)``."""

    def __init__(self, m: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, size, _ = shape
        self.start = 7 if size % 7 == 0 else 8
        stages = round(math.log2(size / self.start))
        self.fc = nn.Linear(m, CHANNELS * self.start**2)
        layers: list[nn.Module] = []
        for i in range(stages):
            out = channels if i == stages - 1 else CHANNELS
            layers += [nn.ConvTranspose2d(CHANNELS, out, 4, stride=2, padding=1)]
            layers += [nn.Sigmoid() if i == stages - 1 else nn.Tanh()]
        self.up = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(z)).reshape(-1, CHANNELS, self.start, self.start)
        return self.up(h)


DECODERS: dict[str, Callable[[int, tuple[int, int, int]], nn.Module]] = {
    "mlp": mlp_decoder,
    "conv": ConvDecoder,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak tensor memory ``fn`` allocates above what was live before it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.profiler.kineto_results.events()
    deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    return max(itertools.accumulate(d for _, d in deltas), default=0)


def floor_time(f: nn.Module, z: torch.Tensor, copies: int, device, repeats: int) -> float:
    """One forward pass of ``copies`` latents per point, without autograd."""
    big = z.repeat_interleave(copies, dim=0)
    with torch.no_grad():
        f(big[:2])
        return best_time(lambda: f(big), device, repeats)


def measure(
    kind: str, m: int, shape: tuple[int, int, int], args, device: torch.device, exact_est: float
) -> dict:
    torch.manual_seed(0)
    f = DECODERS[kind](m, shape).to(device).eval()
    batch, n = args.batch, math.prod(shape)
    z = torch.randn(batch, m, device=device)
    row: dict = {"kind": kind, "m": m, "n": n, "shape": shape}
    width = min(K + OVERSAMPLE, m)

    def per_point(fn: Callable[[], object]) -> float:
        return best_time(fn, device, args.repeats) / batch

    if K < m:
        singular_values(f, z[:1], top_k=K)  # warm-up
        top = singular_values(f, z, top_k=K)
        top2 = top_singular_values(f, z, K, iterations=2)
        row["topk_s"] = per_point(lambda: singular_values(f, z, top_k=K))
        row["topk_floor"] = floor_time(f, z, (2 * ITERATIONS + 1) * width, device, args.repeats)
        row["topk_floor"] /= batch
        row["topk_mem"] = peak_bytes(
            lambda: singular_values(f, z, top_k=K, chunk_size=batch), device
        )
        row["topk_mem"] /= batch
        row["topk_bound"] = min(m, (ITERATIONS + 1) * width) * (n * (4 + 8) + m * 8)
        row["topk2_s"] = per_point(lambda: top_singular_values(f, z, K, iterations=2))
    if exact_est > args.budget:
        row["exact_skipped"] = exact_est
        return row
    singular_values(f, z[:1])  # warm-up
    exact = singular_values(f, z)
    row["exact_s"] = per_point(lambda: singular_values(f, z))
    row["exact_floor"] = floor_time(f, z, m, device, args.repeats) / batch
    row["exact_mem"] = peak_bytes(lambda: singular_values(f, z, chunk_size=batch), device) / batch
    if "topk_s" in row:
        ref = exact[:, :K]
        row["error"] = ((ref - top).abs() / ref).max().item()
        row["error2"] = ((ref - top2).abs() / ref).max().item()
    return row


def cell(row: dict, key: str, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    return fmt.format(row[key] * scale) if key in row else "-"


def print_table(rows: list[dict]) -> None:
    print(
        "| decoder | m | n | exact ms/pt | floor | exact MiB/pt | top-k ms/pt | floor "
        "| top-k MiB/pt | images+bases MiB/pt | exact / top-k | max rel err "
        "| q=2 ms/pt | exact / q=2 | q=2 max rel err |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    mib = 1 / 2**20
    for r in rows:

        def ratio(key: str, r: dict = r) -> str:
            return f"{r['exact_s'] / r[key]:.1f}x" if "exact_s" in r and key in r else "-"

        exact = cell(r, "exact_s", 1e3)
        if "exact_skipped" in r:
            exact = f"skipped (est. {r['exact_skipped']:.0f} s/call)"
        print(
            f"| {r['kind']} | {r['m']} | {'x'.join(map(str, r['shape']))} | {exact} "
            f"| {cell(r, 'exact_floor', 1e3, '{:.3f}')} | {cell(r, 'exact_mem', mib)} "
            f"| {cell(r, 'topk_s', 1e3)} | {cell(r, 'topk_floor', 1e3, '{:.3f}')} "
            f"| {cell(r, 'topk_mem', mib)} | {cell(r, 'topk_bound', mib)} | {ratio('topk_s')} "
            f"| {cell(r, 'error', 1.0, '{:.1e}')} | {cell(r, 'topk2_s', 1e3)} "
            f"| {ratio('topk2_s')} | {cell(r, 'error2', 1.0, '{:.1e}')} |"
        )


def fit(rows: list[dict], key: str) -> tuple[float, float]:
    """Least squares ``log t = c + a log m + b log n``; ``b`` is NaN when n does not vary."""
    pts = [(r["m"], r["n"], r[key]) for r in rows if key in r]
    if len(pts) < 2:
        return math.nan, math.nan
    m, n, t = (np.log(np.array(col, dtype=float)) for col in zip(*pts, strict=True))
    cols = [np.ones_like(m), m] + ([n] if np.ptp(n) > 0 else [])
    coef = np.linalg.lstsq(np.stack(cols, axis=1), t, rcond=None)[0]
    return float(coef[1]), float(coef[2]) if len(coef) > 2 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and points")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="probe points per call")
    parser.add_argument("--budget", type=float, default=None, help="max est. s per exact call")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quick:
        ms, n_sweep_m, args.repeats = (8, 128, 512, 2048), 128, 1
        args.batch = args.batch or 4
        args.budget = args.budget or 3.0
    else:
        ms, n_sweep_m = (8, 32, 128, 256, 512, 2048, 4096), 512
        args.batch = args.batch or 8
        args.budget = args.budget or 15.0
    shapes = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"B = {args.batch} points per call, k = {K}, oversample {OVERSAMPLE}, "
        f"iterations {ITERATIONS}, best of {args.repeats}"
    )
    rows: dict[str, list[dict]] = {}
    for kind in DECODERS:
        rows[kind] = []
        last: tuple[int, float] | None = None  # (m, seconds per exact call)
        for m in ms:
            # up to m = 512 the exact path is cheap; above, extrapolate from the last measured
            # size by m^1.5 (measured 512 -> 2,048: m^1.0 to m^1.5, its Gram uses min(n, m))
            est = 0.0 if last is None or m <= 512 else last[1] * (m / last[0]) ** 1.5
            row = measure(kind, m, shapes[0], args, device, est)
            if "exact_s" in row:
                last = (m, row["exact_s"] * args.batch)
            rows[kind].append(row)
        for shape in shapes[1:]:
            rows[kind].append(measure(kind, n_sweep_m, shape, args, device, 0.0))
        print(f"\n### {kind} decoder: m sweep at n = 784, n sweep at m = {n_sweep_m}\n")
        print_table(rows[kind])

    print("\n### fitted exponents, seconds per point ~ m^a n^b\n")
    print(
        "| decoder | exact a | exact b | top-k a (m >= 128) | top-k b | top-k floor a "
        "| top-k / floor a |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    for kind, kind_rows in rows.items():
        big = [r for r in kind_rows if r["m"] >= 128]
        for r in big:
            if "topk_s" in r:
                r["topk_over_floor"] = r["topk_s"] / r["topk_floor"]
        ea, eb = fit(kind_rows, "exact_s")
        ta, tb = fit(big, "topk_s")
        fa, _ = fit(big, "topk_floor")
        ra, _ = fit(big, "topk_over_floor")
        print(f"| {kind} | {ea:.2f} | {eb:.2f} | {ta:.2f} | {tb:.2f} | {fa:.2f} | {ra:.2f} |")
        at_512 = next((r for r in kind_rows if r["m"] == 512 and r["n"] == 784), None)
        speedup = at_512["exact_s"] / at_512["topk_s"] if at_512 and "exact_s" in at_512 else None
        faster = [
            r["m"]
            for r in kind_rows
            if "exact_s" in r and "topk_s" in r and r["n"] == 784 and r["topk_s"] < r["exact_s"]
        ]
        verdicts.append((kind, ta, fa, ra, speedup, min(faster) if faster else None))

    print("\n### targets\n")
    for kind, ta, fa, ra, speedup, crossover in verdicts:
        ok = "met" if ta < TARGET_EXPONENT else "MISSED"
        ok_ratio = "met" if ra < TARGET_EXPONENT else "MISSED"
        print(
            f"- {kind}: top-k exponent in m {ta:.2f} (target < {TARGET_EXPONENT}: {ok}); the "
            f"floor of its products grows as m^{fa:.2f} (the decoder's first layer, m x width), "
            f"top-k / floor as m^{ra:.2f} ({ok_ratio})"
        )
        if speedup is not None:
            ok = "met" if speedup >= TARGET_SPEEDUP else "MISSED"
            print(
                f"- {kind}: m = 512, top-k (k = {K}) {speedup:.1f}x faster than exact "
                f"(target >= {TARGET_SPEEDUP:.0f}: {ok})"
            )
        print(f"- {kind}: top-k is the faster from m = {crossover} on (of the sizes measured)")


if __name__ == "__main__":
    main()
