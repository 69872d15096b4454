"""Batched latent recovery against Webster et al.'s protocol, one L-BFGS per image (CPU, float32).

Run: ``python benchmarks/recovery.py``. A random-weight tanh MLP decoder ``R^16 -> R^256 -> R^784``
(sigmoid output, a VAE decoder's shape) and 128 targets: decoder outputs at latents drawn from the
prior plus Gaussian pixel noise of standard deviation ``NOISE``, so no target lies exactly on the
decoder's range and each has a non-zero optimum (about ``NOISE^2 * (1 - 16/784)`` when recovery
succeeds).

- ``recover_latents``: the package, one ``torch.optim.LBFGS`` on the summed loss of all 128
  latents, ``steps=50``, ``restarts=2``;
- Webster et al.'s protocol (Webster et al. (2019), sec. 2.1): for each image and each
  start, its own ``torch.optim.LBFGS`` (strong Wolfe, ``max_iter=50``, the same tolerances),
  ``loss.backward()`` on that image's loss, the final iterate kept; the better of the starts.

Both use the same two prior draws per image (the package's draws for the same generator seed).
Prints a markdown table: wall time (``time.perf_counter``, best of ``REPEATS`` for the batched
call, one run of the loop), median recovery error (Webster et al. (2019), eq. 4) of each, their
ratio, and the fraction of targets each brings within 10% of the noise floor; then the fraction of
targets whose two errors agree within 1%.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from lightning_memwatch.functional import recover_latents
from lightning_memwatch.functional.recovery import TOLERANCE_CHANGE, TOLERANCE_GRAD

LATENT, HIDDEN, OUTPUT = 16, 256, 784
TARGETS, STEPS, RESTARTS, NOISE, SEED, REPEATS = 128, 50, 2, 0.01, 0, 3
TARGET_SPEEDUP, TARGET_MEDIAN_TOLERANCE = 10.0, 0.05


def webster_loop(decoder: nn.Module, x: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
    """One L-BFGS per image and start; each image's best final error over its starts."""
    target = x.reshape(len(x), -1)
    best_z = torch.empty(len(x), starts.shape[-1], device=x.device)
    best = torch.full((len(x),), torch.inf, dtype=torch.float64, device=x.device)
    for i in range(len(x)):
        for start in starts[:, i : i + 1]:
            z = start.clone().requires_grad_(True)
            optimizer = torch.optim.LBFGS(
                [z],
                max_iter=STEPS,
                tolerance_grad=TOLERANCE_GRAD,
                tolerance_change=TOLERANCE_CHANGE,
                line_search_fn="strong_wolfe",
            )

            def closure(z: Tensor = z, i: int = i) -> Tensor:
                z.grad = None
                loss = (decoder(z).reshape(1, -1) - target[i : i + 1]).square().mean()
                loss.backward()
                return loss

            optimizer.step(closure)
            with torch.no_grad():
                error = (decoder(z).reshape(1, -1) - target[i : i + 1]).double().square().mean()
            if error < best[i]:
                best[i], best_z[i] = error, z.detach()[0]
    return best_z, best


def problem(device: str | torch.device = "cpu") -> tuple[nn.Module, Tensor, float]:
    """The decoder, the ``TARGETS`` noisy targets (drawn on the CPU from ``SEED``, so the same
    on every device) on ``device``, and the noise floor of the recovery error."""
    torch.manual_seed(SEED)
    decoder = nn.Sequential(
        nn.Linear(LATENT, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUTPUT), nn.Sigmoid()
    ).eval()
    decoder.requires_grad_(False)  # the loop calls .backward(); only the latents need grads
    with torch.no_grad():
        z_true = torch.randn(TARGETS, LATENT)
        x = decoder(z_true) + NOISE * torch.randn(TARGETS, OUTPUT)
    return decoder.to(device), x.to(device), NOISE**2 * (1 - LATENT / OUTPUT)


def batched_recovery(decoder: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The package's call: one L-BFGS on all targets, starts from a generator seeded ``SEED``."""
    generator = torch.Generator().manual_seed(SEED)
    return recover_latents(
        decoder, x, latent_dim=LATENT, steps=STEPS, restarts=RESTARTS, generator=generator
    )


def loop_starts() -> Tensor:
    """The per-image loop's ``RESTARTS`` starts per target: the package's prior draws."""
    return torch.randn(RESTARTS, TARGETS, LATENT, generator=torch.Generator().manual_seed(SEED))


def main() -> None:
    decoder, x, floor = problem()

    def batched() -> tuple[Tensor, Tensor]:
        return batched_recovery(decoder, x)

    batched()  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        _, errors = batched()
        times.append(time.perf_counter() - start)
    batched_s = min(times)

    start = time.perf_counter()
    _, loop_errors = webster_loop(decoder, x, loop_starts())
    loop_s = time.perf_counter() - start

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, tanh MLP "
        f"{LATENT}->{HIDDEN}->{OUTPUT}, {TARGETS} targets (decoder outputs + N(0, {NOISE}^2) "
        f"noise, floor {floor:.3e}), steps={STEPS}, restarts={RESTARTS}\n"
    )
    print("| method | seconds | median error | within 10% of floor | speed-up |")
    print("|---|---|---|---|---|")
    for name, seconds, errs in (
        ("recover_latents (batched)", batched_s, errors),
        ("per-image loop (one L-BFGS per image)", loop_s, loop_errors),
    ):
        near = (errs < 1.1 * floor).double().mean().item()
        print(
            f"| {name} | {seconds:.2f} | {errs.median().item():.4e} | {near:.0%} | "
            f"{loop_s / seconds:.1f}x |"
        )
    speedup = loop_s / batched_s
    median_diff = abs(errors.median().item() / loop_errors.median().item() - 1)
    agree = ((errors - loop_errors).abs() <= 0.01 * loop_errors).double().mean().item()
    print(
        f"\nspeed-up {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x), median errors differ by "
        f"{median_diff:.1%} (target <= {TARGET_MEDIAN_TOLERANCE:.0%}); the two errors of a target "
        f"agree within 1% for {agree:.0%} of the targets"
    )


if __name__ == "__main__":
    main()
