"""Batched dip / decay scores against a python loop over paths (CPU, float32).

Run: ``python benchmarks/density.py``. A tanh MLP decoder ``R^16 -> R^256 -> R^784`` (and a small
``R^8 -> R^32 -> R^64`` one, where per-call overhead rather than arithmetic dominates) and 64
paths (dip: 64 latent segments of ``steps = 17``; decay: 64 line centres, radii 0.5 and 1). The
batched call evaluates every path at once (one Jacobian pass and one decoder pass per stage); the
loop calls the same public function with one path at a time. Prints a markdown table:
best-of-repeats wall time of each (``time.perf_counter``), their ratio, and the largest
difference between the two results.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_memwatch.functional import decay_scores, dip_scores

DECODERS = ((16, 256, 784), (8, 32, 64))  # (latent, hidden, output): the brief's, and a small one
PATHS, REPEATS = 64, 3


def best_time(fn: Callable[[], Tensor], repeats: int = REPEATS) -> tuple[float, Tensor]:
    """Best wall time of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def loop(fn: Callable[..., Tensor], *latents: Tensor) -> Tensor:
    """``fn`` on one path at a time, results stacked."""
    return torch.cat([fn(*(z[i : i + 1] for z in latents)) for i in range(len(latents[0]))])


def compare(latent: int, hidden: int, output: int) -> list[str]:
    """Markdown rows (dip, decay) for one tanh MLP decoder."""
    torch.manual_seed(0)
    decoder = nn.Sequential(
        nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, output), nn.Tanh()
    ).eval()
    z_start, z_end = torch.randn(PATHS, latent), torch.randn(PATHS, latent)

    def dip(a: Tensor, b: Tensor) -> Tensor:
        return dip_scores(decoder, a, b)

    def decay(a: Tensor) -> Tensor:
        return decay_scores(decoder, a)

    rows = []
    for name, fn, latents in (("dip", dip, (z_start, z_end)), ("decay", decay, (z_start,))):
        batched_s, batched = best_time(lambda fn=fn, latents=latents: fn(*latents))
        looped_s, looped = best_time(lambda fn=fn, latents=latents: loop(fn, *latents))
        both = torch.isfinite(batched) & torch.isfinite(looped)
        same_nan = bool((torch.isnan(batched) == torch.isnan(looped)).all())
        diff = (batched[both] - looped[both]).abs().max().item()
        nan = f"{int(torch.isnan(batched).sum())}" + ("" if same_nan else " (pattern differs!)")
        rows.append(
            f"| {latent}->{hidden}->{output} | {name} | {batched_s:.3f} | {looped_s:.3f} | "
            f"{looped_s / batched_s:.1f}x | {diff:.1e} | {nan} |"
        )
    return rows


def main() -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {PATHS} paths, "
        f"tanh MLP decoders, float32, best of {REPEATS}\n"
    )
    print("| decoder | score | batched (s) | loop (s) | loop / batched | max abs diff | NaN |")
    print("|---|---|---|---|---|---|---|")
    for sizes in DECODERS:
        print("\n".join(compare(*sizes)))


if __name__ == "__main__":
    main()
