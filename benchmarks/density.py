"""Dip and decay scores: today's code path against the previous one, side by side (CPU, float32).

Run: ``OMP_NUM_THREADS=1 python benchmarks/density.py``. Two decoders: a tanh MLP
``R^16 -> R^256 -> R^784`` and a DCGAN-like conv decoder ``R^32 -> (1, 28, 28)``; ``PATHS``
random latent pairs / line centres, ``steps = 17``, radii 0.5 and 1.

- **dip**: the previous path (kept below, :func:`old_dip`) computes Jacobians at four samples
  per path (both ends and the two bracketing the arclength midpoint) and interpolates ``lp``
  between the two; :func:`~lightning_memwatch.functional.dip_scores` evaluates ``lp`` at the
  exact latent midpoint: three Jacobians per path, or one when the caller passes the ends'
  spectra (``s_start`` / ``s_end`` from the probe's spectrum pass, not timed here).
- **decay**: the previous line search (:func:`old_radius_offsets`: 64 coarse samples per side
  over ``[0, LATENT_LIMIT]`` plus 16 fine ones per radius) against
  :func:`~lightning_memwatch.functional.paths.radius_offsets` (32 coarse samples plus
  bisection), timed alone ("search") and inside the whole score, with and without the centre's
  spectrum and top vector given (``head``).

Prints best-of-``REPEATS`` wall times (``time.perf_counter``; the variants of one row timed in
interleaved rounds), new / old ratios, and how the
per-sample values agree: the share within 1% (relative) of the previous value, the largest
relative difference, and the median absolute difference beside the spread (standard deviation)
of the previous values over the samples.

A second table times the batched scores against a python loop calling them path by path (tanh
MLPs ``16 -> 256 -> 784`` and ``8 -> 32 -> 64``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_memwatch.functional import decay_scores, dip_scores
from lightning_memwatch.functional.density import _log_prior, _scaling_at_rank
from lightning_memwatch.functional.jacobian import as_plain_tensor, map_jacobian_chunks
from lightning_memwatch.functional.paths import LATENT_LIMIT, arclength, interp, radius_offsets
from lightning_memwatch.functional.spectrum import (
    gram_singular_values,
    gram_singular_values_and_top_vector,
    intrinsic_dim,
)

PATHS, REPEATS, RADII = 64, 3, (0.5, 1.0)
OLD_COARSE, OLD_FINE = 64, 16


# ------------------------------------------------------------------ the previous code path
def old_dip(f: Callable[[Tensor], Tensor], z0: Tensor, z1: Tensor, steps: int = 17) -> Tensor:
    """Dip with ``lp`` at four samples per path, interpolated at the arclength midpoint."""
    batch, dim = z0.shape
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)[:, None]
    path = ((1 - t) * z0.double()[:, None] + t * z1.double()[:, None]).to(z0.dtype)
    arc = arclength(f, path)
    total = arc[:, -1]
    below = torch.searchsorted(arc.contiguous(), (total / 2)[:, None].contiguous(), right=True)
    below = (below - 1).clamp(0, steps - 2)
    cols = torch.cat(
        [torch.zeros_like(below), torch.full_like(below, steps - 1), below, below + 1], 1
    )
    anchors = path.gather(1, cols[..., None].expand(-1, -1, dim))
    s = map_jacobian_chunks(f, anchors.reshape(-1, dim), gram_singular_values)
    s = s.reshape(batch, 4, -1)
    k = intrinsic_dim(s[:, 0])
    lp = _log_prior(anchors) - _scaling_at_rank(s, k[:, None])
    dip = lp[:, 0] + lp[:, 1] - 2 * interp(total / 2, arc.gather(1, cols[:, 2:]), lp[:, 2:])
    valid = torch.isfinite(lp).all(dim=-1) & torch.isfinite(arc).all(dim=-1) & (total > 0)
    return torch.where(valid, dip, torch.nan)


def old_radius_offsets(f: Callable[[Tensor], Tensor], z: Tensor, v: Tensor, radii: Tensor):
    """The previous search: 64 coarse samples per side, 16 fine ones in each bracket."""
    batch, dim = z.shape
    radii = radii.expand(batch, 2, -1).contiguous()
    opts = {"dtype": torch.float64}
    sides = torch.tensor([1.0, -1.0], **opts)[:, None]
    t = (sides * torch.linspace(0.0, LATENT_LIMIT, OLD_COARSE + 1, **opts)).expand(batch, 2, -1)

    def line(t: Tensor) -> Tensor:
        shape = (batch,) + (1,) * (t.ndim - 1) + (dim,)
        return (z.double().reshape(shape) + t[..., None] * v.reshape(shape)).to(z.dtype)

    arc = arclength(f, line(t))
    arc = torch.where(torch.isnan(arc), torch.inf, arc)
    hi = torch.searchsorted(arc, radii, right=False)
    reached = hi <= OLD_COARSE
    hi = hi.clamp(1, OLD_COARSE)
    t_lo, t_hi, arc_lo = t.gather(-1, hi - 1), t.gather(-1, hi), arc.gather(-1, hi - 1)
    frac = torch.linspace(0.0, 1.0, OLD_FINE + 1, **opts)
    fine_t = t_lo[..., None] + (t_hi - t_lo)[..., None] * frac
    fine_arc = arc_lo[..., None] + arclength(f, line(fine_t))
    offsets = interp(radii, fine_arc, fine_t)
    reached &= torch.isfinite(fine_arc).all(dim=-1)
    return torch.where(reached, offsets, torch.nan)


def old_decay(f: Callable[[Tensor], Tensor], z: Tensor, radii=RADII) -> Tensor:
    """The previous decay: head Jacobian, the 64 + 16 search, end Jacobians."""
    r = torch.tensor(radii, dtype=torch.float64)
    z = as_plain_tensor(z)
    dim = z.shape[1]
    head = map_jacobian_chunks(f, z, gram_singular_values_and_top_vector)
    s0, v = head[:, :-dim], head[:, -dim:].nan_to_num(0.0)
    k = intrinsic_dim(s0)
    t = old_radius_offsets(f, z, v, r)
    ends = (z.double()[:, None, None] + t.nan_to_num(0.0)[..., None] * v[:, None, None]).to(z.dtype)
    s = map_jacobian_chunks(f, ends.reshape(-1, dim), gram_singular_values).reshape(*t.shape, -1)
    lp = _log_prior(ends) - _scaling_at_rank(s, k[:, None, None])
    lp0 = _log_prior(z) - _scaling_at_rank(s0, k)
    eta = (lp[:, 0] + lp[:, 1] - 2 * lp0[:, None]) / r
    return torch.where(torch.isfinite(t).all(dim=1) & torch.isfinite(eta), eta, torch.nan)


# ------------------------------------------------------------------ decoders and timing
class ConvDecoder(nn.Module):
    """DCGAN-like: ``R^m -> 64 x 7 x 7 -> 32 x 14 x 14 -> 1 x 28 x 28``, tanh."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.fc = nn.Linear(m, 64 * 7 * 7)
        self.up1 = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = torch.relu(self.fc(z)).reshape(-1, 64, 7, 7)
        return torch.tanh(self.up2(torch.relu(self.up1(h))))


def decoders() -> dict[str, tuple[nn.Module, int]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 784), nn.Tanh())
    return {"MLP 16->784": (mlp.eval(), 16), "conv 32->28x28": (ConvDecoder(32).eval(), 32)}


def best_time(fn: Callable[[], Tensor]) -> tuple[float, Tensor]:
    """Best wall time of ``REPEATS`` calls after one warm-up call, and the last result."""
    return best_times(fn)[0]


def best_times(*fns: Callable[[], Tensor]) -> list[tuple[float, Tensor]]:
    """Best wall time of each of ``fns`` over ``REPEATS`` interleaved rounds (one warm-up call
    each first), so that a busy machine slows every variant alike; and the last results."""
    results = [fn() for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(REPEATS):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return list(zip(best, results, strict=True))


def agreement(new: Tensor, old: Tensor) -> str:
    """Share of finite per-sample values within 1% of the previous one, the largest relative
    difference, median absolute difference / spread of the previous values, NaN mismatches."""
    both = torch.isfinite(new) & torch.isfinite(old)
    diff = (new - old).abs()[both]
    rel = diff / old.abs()[both].clamp_min(1e-12)
    nan = int((torch.isnan(new) != torch.isnan(old)).sum())
    return (
        f"{(rel <= 0.01).double().mean().item():.1%} | {rel.max().item():.1e} | "
        f"{diff.median().item():.1e} / {old[both].std().item():.1e} | {nan}"
    )


def rows(name: str, f: nn.Module, m: int) -> list[str]:
    gen = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(PATHS, m, generator=gen), torch.randn(PATHS, m, generator=gen)
    s0 = map_jacobian_chunks(f, z0, gram_singular_values)
    s1 = map_jacobian_chunks(f, z1, gram_singular_values)
    head = map_jacobian_chunks(f, z0, gram_singular_values_and_top_vector)
    v = head[:, -m:]
    radii = torch.tensor(RADII, dtype=torch.float64)
    (old_s, old), (new_s, new), (given_s, given) = best_times(
        lambda: old_dip(f, z0, z1),
        lambda: dip_scores(f, z0, z1),
        lambda: dip_scores(f, z0, z1, s_start=s0, s_end=s1),
    )
    assert torch.allclose(given, new, equal_nan=True, atol=1e-5)
    out = [
        f"| {name} | dip | {old_s:.3f} | {new_s:.3f} ({new_s / old_s:.2f}x) | "
        f"{given_s:.3f} ({given_s / old_s:.2f}x) | {agreement(new, old)} |"
    ]
    (old_s, old_t), (new_s, new_t) = best_times(
        lambda: old_radius_offsets(f, z0, v, radii), lambda: radius_offsets(f, z0, v, radii)[0]
    )
    out.append(
        f"| {name} | decay search | {old_s:.3f} | {new_s:.3f} ({new_s / old_s:.2f}x) | - | "
        f"{agreement(new_t, old_t)} |"
    )
    (old_s, old), (new_s, new), (given_s, given) = best_times(
        lambda: old_decay(f, z0),
        lambda: decay_scores(f, z0, radii=RADII),
        lambda: decay_scores(f, z0, radii=RADII, head=head),
    )
    assert torch.allclose(given, new, equal_nan=True, atol=1e-5)
    out.append(
        f"| {name} | decay | {old_s:.3f} | {new_s:.3f} ({new_s / old_s:.2f}x) | "
        f"{given_s:.3f} ({given_s / old_s:.2f}x) | {agreement(new, old)} |"
    )
    return out


# ------------------------------------------------------------------ batched against a loop
LOOP_DECODERS = ((16, 256, 784), (8, 32, 64))  # (latent, hidden, output)


def loop(fn: Callable[..., Tensor], *latents: Tensor) -> Tensor:
    """``fn`` on one path at a time, results stacked."""
    return torch.cat([fn(*(z[i : i + 1] for z in latents)) for i in range(len(latents[0]))])


def compare(latent: int, hidden: int, output: int) -> list[str]:
    """Markdown rows (dip, decay) for one tanh MLP decoder: batched against a loop."""
    torch.manual_seed(0)
    decoder = nn.Sequential(
        nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, output), nn.Tanh()
    ).eval()
    z_start, z_end = torch.randn(PATHS, latent), torch.randn(PATHS, latent)

    def dip(a: Tensor, b: Tensor) -> Tensor:
        return dip_scores(decoder, a, b)

    def decay(a: Tensor) -> Tensor:
        return decay_scores(decoder, a)

    out = []
    for name, fn, latents in (("dip", dip, (z_start, z_end)), ("decay", decay, (z_start,))):
        batched_s, batched = best_time(lambda fn=fn, latents=latents: fn(*latents))
        looped_s, looped = best_time(lambda fn=fn, latents=latents: loop(fn, *latents))
        both = torch.isfinite(batched) & torch.isfinite(looped)
        same_nan = bool((torch.isnan(batched) == torch.isnan(looped)).all())
        diff = (batched[both] - looped[both]).abs().max().item()
        nan = f"{int(torch.isnan(batched).sum())}" + ("" if same_nan else " (pattern differs!)")
        out.append(
            f"| {latent}->{hidden}->{output} | {name} | {batched_s:.3f} | {looped_s:.3f} | "
            f"{looped_s / batched_s:.1f}x | {diff:.1e} | {nan} |"
        )
    return out


def main() -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {PATHS} paths, "
        f"float32, best of {REPEATS}\n"
    )
    print(
        "| decoder | score | previous (s) | now (s) | now, spectra given (s) | "
        "within 1% | max rel diff | median abs diff / spread | NaN differs |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (f, m) in decoders().items():
        print("\n".join(rows(name, f, m)), flush=True)
    print("\n| decoder | score | batched (s) | loop (s) | loop / batched | max abs diff | NaN |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for sizes in LOOP_DECODERS:
        print("\n".join(compare(*sizes)), flush=True)


if __name__ == "__main__":
    main()
