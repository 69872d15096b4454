"""What differentiating a decoder costs when forward mode cannot run as torch picks the kernels.

    python benchmarks/autodiff_fallback.py            # four cases, CPU (or CUDA when available)
    python benchmarks/autodiff_fallback.py --quick    # fewer points, one repeat, for a smoke run

For an MLP decoder and an attention decoder (``nn.MultiheadAttention`` over 16 tokens of width
32), each to ``n = 64`` and ``n = 784`` outputs from ``m = 16`` latents, it times the exact
Jacobian of ``B`` points, all in one chunk (seconds, best of ``--repeats`` rounds in which every
method runs once in turn), side by side:

- ``forward, default kernels``: a ``vmap`` of ``torch.func.jvp`` as torch picks the kernels; on
  the attention decoder it fails (the fast path ``aten::_native_multi_head_attention`` has no
  forward-mode rule), which the row says;
- ``forward, math attention (memwatch)``: ``lightning_memwatch.functional.jacobian``, which runs
  attention on the math kernel without the fast path (``forward_mode_kernels``);
- the reverse-mode fallbacks the package takes when an op has no forward-mode rule, inside the
  same context: ``torch.func.vjp`` under ``vmap`` (``vjp``), ``torch.autograd.grad`` with
  ``is_grads_batched`` (``grad``, what a custom ``autograd.Function`` without
  ``setup_context`` gets) and one ``torch.autograd.grad`` per output element (``grad-loop``);
- on the attention decoder, ``vjp`` with the default kernels too: the fused kernel's backward
  has no batching rule, which is why the fallback also runs on the math kernel.

Each row's ratio is to the package's forward mode in the same run, and its error is the largest
entry difference to a float64 reverse-mode Jacobian over the largest entry.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_memwatch.functional import forward_mode_kernels, jacobian
from lightning_memwatch.functional.autodiff import failing_op
from lightning_memwatch.functional.jacobian import DEFAULT_CHUNK_BYTES, _forward_chunk
from lightning_memwatch.functional.reverse import reverse_jacobian

LATENT = 16
#: Output rows the per-output loop is timed on; its time is scaled to all ``n`` rows.
LOOP_ROWS = 32


def mlp_decoder(n: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(LATENT, 256), nn.Tanh(), nn.Linear(256, 512), nn.Tanh(), nn.Linear(512, n)
    )


class AttentionDecoder(nn.Module):
    """``m`` latents to 16 tokens of width 32, one ``nn.MultiheadAttention`` (4 heads) with a
    residual and a feed-forward layer, then a linear map of the flattened tokens to ``n``."""

    def __init__(self, n: int, tokens: int = 16, width: int = 32) -> None:
        super().__init__()
        self.tokens, self.width = tokens, width
        self.embed = nn.Linear(LATENT, tokens * width)
        self.attention = nn.MultiheadAttention(width, num_heads=4, batch_first=True)
        self.feed = nn.Sequential(nn.Linear(width, 64), nn.GELU(), nn.Linear(64, width))
        self.out = nn.Linear(tokens * width, n)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(z)).reshape(-1, self.tokens, self.width)
        h = h + self.attention(h, h, h, need_weights=False)[0]
        return self.out((h + self.feed(h)).flatten(1))


CASES: dict[str, Callable[[int], nn.Module]] = {"mlp": mlp_decoder, "attention": AttentionDecoder}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def reference64(f: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Float64 reverse-mode Jacobians ``(B, n, m)``: one backward of ``sum_b f_i(z_b)`` per
    output element, on a float64 copy (torch's default kernels)."""
    g = copy.deepcopy(f).double()
    x = z.detach().double().requires_grad_(True)
    y = g(x).reshape(len(x), -1)
    rows = [torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)[0] for i in range(y.shape[1])]
    return torch.stack(rows, dim=1)


def methods(f: nn.Module, z: torch.Tensor, attention: bool) -> dict[str, Callable[[], Tensor]]:
    def forward_default() -> Tensor:
        with torch.no_grad():
            return _forward_chunk(f, z, None)[1]

    def reverse(mode: str, context: bool = True, limit: int | None = None) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with forward_mode_kernels() if context else contextlib.nullcontext():
                return reverse_jacobian(f, z, mode, budget_bytes=DEFAULT_CHUNK_BYTES, limit=limit)[
                    1
                ]

        return run

    rows = {
        "forward, default kernels": forward_default,
        "forward, math attention (memwatch)": lambda: jacobian(f, z, chunk_size=len(z)),
        "reverse: torch.func.vjp under vmap": reverse("vjp"),
        "reverse: autograd.grad, is_grads_batched": reverse("grad"),
        f"reverse: autograd.grad per output (loop; {LOOP_ROWS} rows, x n / {LOOP_ROWS})": reverse(
            "grad-loop", limit=LOOP_ROWS
        ),
    }
    if attention:
        rows["reverse: torch.func.vjp, default kernels"] = reverse("vjp", context=False)
    return rows


def run_case(name: str, n: int, batch: int, device: torch.device, repeats: int) -> list[tuple]:
    """Rows ``(label, seconds, x forward, error)``. The methods are timed in turns (one pass of
    each, ``repeats`` rounds, the best of each kept), so a load that comes and goes on a shared
    machine falls on all of them alike."""
    torch.manual_seed(0)
    f = CASES[name](n).to(device).eval()
    z = torch.randn(batch, LATENT, device=device)
    ref = reference64(f, z)
    scale = ref.abs().max().item()
    runs, outcome = {}, {}
    for label, fn in methods(f, z, name == "attention").items():
        try:
            jac = fn().double()  # also the warm-up
        except (RuntimeError, NotImplementedError) as error:
            outcome[label] = f"fails: {failing_op(error)}"
            continue
        outcome[label] = f"{(jac - ref[:, : jac.shape[1]]).abs().max().item() / scale:.1e}"
        rows = ref.shape[1] / jac.shape[1]  # the loop is timed on LOOP_ROWS rows
        runs[label] = (fn, rows, [])
    for _ in range(repeats):
        for fn, rows, times in runs.values():
            times.append(timed(fn, device) * rows)
    seconds = {label: min(times) for label, (_, _, times) in runs.items()}
    base = seconds["forward, math attention (memwatch)"]
    return [
        (label, seconds.get(label), seconds[label] / base if label in seconds else None, text)
        for label, text in outcome.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 points, one repeat")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batch, repeats = (8, 1) if args.quick else (args.batch, args.repeats)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"B={batch}, m={LATENT}, best of {repeats}"
    )
    for name in CASES:
        for n in (64, 784):
            print(f"\n### {name} decoder: B={batch}, m={LATENT}, n={n} (n / m = {n / LATENT:g})\n")
            print("| method | seconds | x forward (memwatch) | max abs error / max abs J |")
            print("|---|---:|---:|---:|")
            for label, seconds, ratio, error in run_case(name, n, batch, device, repeats):
                if seconds is None:
                    print(f"| {label} |  |  | {error} |")
                else:
                    print(f"| {label} | {seconds:.4f} | {ratio:.2f} | {error} |")


if __name__ == "__main__":
    main()
