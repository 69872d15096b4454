"""Cost of ``dip_scores`` and ``decay_scores`` as the latent size m grows: exact and top-k.

    python benchmarks/density_scaling.py            # m = 32 ... 2,048: a few minutes, 2 cores
    python benchmarks/density_scaling.py --quick    # m = 128, 512: a smoke run
    python benchmarks/density_scaling.py --device cuda

The decoders of ``benchmarks/scaling.py`` (an MLP and a DCGAN-style conv decoder of fixed
width, ``R^m -> (1, 28, 28)``), ``B`` random latent pairs / line centres, the functions called
as a user calls them (no precomputed spectra: the dip takes three spectra a path, the decay a
spectrum and top vector at its centre and one spectrum at each of its ``2 R`` line ends).
Per point, side by side in one run, best of ``--repeats``: seconds exact and with
``top_k = 32`` (randomized block Krylov, one step, oversampling 8), their ratio, and the largest
relative difference of the top-k scores from the same definitions on the exact top 32 values
(the top-k functions with a start block that spans ``R^m``, where Rayleigh-Ritz is exact),
and the same for two Krylov steps (``q = 2``, ``5 l`` products instead of ``3 l``).
Then the exponent of top-k seconds in m (least squares on logs over ``m >= 128``) and the
speed ratio at m = 512. Exact calls whose extrapolated time (``m^1.5`` from the last size
measured) exceeds ``--budget`` s are skipped. Timings on a shared machine move with its load:
compare within one run.

Measured (CPU, 1 thread on a shared 2-core machine, full run 4 min 42 s; ``--quick`` 35-64 s):
at m = 512 top-k is 9.1x (MLP) and 8.1x (conv) faster than exact for the dip and 5.9x and
6.6x for the decay, whose line search is forward passes that both paths pay; top-k seconds
grow as m^0.21 to m^0.38 over m = 128 ... 2,048 (the MLP's first layer and the search's
forward passes grow with m); at m = 2,048 exact is skipped (estimated 20 and 67 s a call).
Top-k error against the exact top 32: dip at most 3.3e-3, decay 5-6% at m = 128, 16-19% at
512, 17-34% at 2,048 (``q = 2``: 0.2%, 1-3%, 1-9%, at 1.1-2x the top-k time).
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from scaling import DECODERS, best_time

from lightning_memwatch.functional import decay as decay_module
from lightning_memwatch.functional import decay_scores, dip_scores
from lightning_memwatch.functional import density as density_module

K = 32
SHAPE = (1, 28, 28)
RADII = (0.5, 1.0)


@contextmanager
def top_k_options(**options: int) -> Iterator[None]:
    """Call the top-k functions with other options for a while: ``oversample=m`` makes them
    exact (a start block of all ``m`` columns), ``iterations=2`` is the ``q = 2`` variant."""
    saved = density_module.top_singular_values, decay_module.top_singular_values_and_vector
    density_module.top_singular_values = functools.partial(saved[0], **options)
    decay_module.top_singular_values_and_vector = functools.partial(saved[1], **options)
    try:
        yield
    finally:
        density_module.top_singular_values, decay_module.top_singular_values_and_vector = saved


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    ok = torch.isfinite(want) & torch.isfinite(got)
    return ((got - want).abs() / want.abs())[ok].max().item() if bool(ok.any()) else math.nan


def measure(kind: str, m: int, args, device: torch.device, skip_exact: bool) -> dict:
    torch.manual_seed(0)
    f = DECODERS[kind](m, SHAPE).to(device).eval()
    z0 = torch.randn(args.batch, m, device=device)
    z1 = torch.randn(args.batch, m, device=device)
    calls = {
        "dip": lambda **kw: dip_scores(f, z0, z1, **kw),
        "decay": lambda **kw: decay_scores(f, z0, radii=RADII, **kw),
    }
    row: dict = {"kind": kind, "m": m}
    for name, call in calls.items():
        top = call(top_k=K)  # also the warm-up
        row[f"{name}_topk"] = best_time(lambda c=call: c(top_k=K), device, args.repeats)
        with top_k_options(oversample=m):
            exact_top = call(top_k=K)
        row[f"{name}_err"] = relative_error(top, exact_top)
        with top_k_options(iterations=2):
            row[f"{name}_err2"] = relative_error(call(top_k=K), exact_top)
            row[f"{name}_topk2"] = best_time(lambda c=call: c(top_k=K), device, args.repeats)
        if not skip_exact:
            call()
            row[f"{name}_exact"] = best_time(call, device, args.repeats)
        for key in (f"{name}_topk", f"{name}_topk2", f"{name}_exact"):
            if key in row:
                row[key] /= args.batch
    return row


def exponent(rows: list[dict], key: str) -> float:
    pts = [(r["m"], r[key]) for r in rows if key in r and r["m"] >= 128]
    if len(pts) < 2:
        return math.nan
    m, t = (np.log(np.array(col, dtype=float)) for col in zip(*pts, strict=True))
    return float(np.polyfit(m, t, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="m = 128 and 512 only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="pairs / centres per call")
    parser.add_argument("--budget", type=float, default=20.0, help="max est. s per exact call")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ms = (128, 512) if args.quick else (32, 128, 512, 2048)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"B = {args.batch}, n = {math.prod(SHAPE)}, k = {K}, radii {RADII}, "
        f"best of {args.repeats}"
    )
    print(
        "\n| decoder | m | dip exact ms/pt | top-k ms/pt | exact / top-k | top-k rel err "
        "| q=2 ms/pt | q=2 rel err | decay exact ms/pt | top-k ms/pt | exact / top-k "
        "| top-k rel err | q=2 ms/pt | q=2 rel err | run s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows: dict[str, list[dict]] = {}
    for kind in DECODERS:
        rows[kind] = []
        last: tuple[int, float] | None = None
        for m in ms:
            est = 0.0 if last is None else last[1] * (m / last[0]) ** 1.5
            start = time.perf_counter()
            r = measure(kind, m, args, device, skip_exact=est > args.budget)
            if "decay_exact" in r:
                last = (m, (r["dip_exact"] + r["decay_exact"]) * args.batch)
            rows[kind].append(r)
            cells = [kind, str(m)]
            for name in ("dip", "decay"):
                exact = r.get(f"{name}_exact")
                cells += [
                    f"{exact * 1e3:.1f}" if exact else f"skipped (est. {est:.0f} s)",
                    f"{r[f'{name}_topk'] * 1e3:.1f}",
                    f"{exact / r[f'{name}_topk']:.1f}x" if exact else "-",
                    f"{r[f'{name}_err']:.1e}",
                    f"{r[f'{name}_topk2'] * 1e3:.1f}",
                    f"{r[f'{name}_err2']:.1e}",
                ]
            print("| " + " | ".join(cells) + f" | {time.perf_counter() - start:.0f} |")
    print()
    for kind, kind_rows in rows.items():
        at_512 = next((r for r in kind_rows if r["m"] == 512), None)
        for name in ("dip", "decay"):
            a = exponent(kind_rows, f"{name}_topk")
            ratio = "-"
            if at_512 and f"{name}_exact" in at_512:
                ratio = f"{at_512[f'{name}_exact'] / at_512[f'{name}_topk']:.1f}x"
            print(
                f"- {kind} {name}: top-k seconds ~ m^{a:.2f} (m >= 128); at m = 512, k = {K}: "
                f"top-k {ratio} faster than exact"
            )


if __name__ == "__main__":
    main()
