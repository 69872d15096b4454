"""The context a measurement runs in, so that it cannot change training.

Inside: reverse- and forward-mode AD enabled whatever the caller's grad mode (validation runs
under ``no_grad``, ``trainer.validate`` under ``inference_mode``), autocast off, TF32 matmuls off,
every submodule in eval mode (no dropout draws, no BatchNorm running-stat updates), the global
RNG streams (CPU and CUDA) saved, and attention and GroupNorm on kernels that forward-mode AD
differentiates (:func:`~lightning_memwatch.functional.kernels.forward_mode_kernels`: SDPA's math
kernel, the ``nn.MultiheadAttention`` fast path off). On exit modes, TF32 flags, attention
switches and RNG states are restored. On ranks other than zero the one-time
:class:`~lightning_memwatch.functional.autodiff.AutodiffFallbackWarning` is silenced, so a
decoder measured in reverse mode is announced once, not once per process.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn

from lightning_memwatch.functional.autodiff import AutodiffFallbackWarning
from lightning_memwatch.functional.kernels import forward_mode_kernels


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in modes:
            sub.training = training


@contextmanager
def _tf32_disabled() -> Iterator[None]:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def _fallback_notice_on_rank_zero() -> Iterator[None]:
    if getattr(rank_zero_only, "rank", 0) == 0:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AutodiffFallbackWarning)
        yield


@contextmanager
def measurement_context(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Run a measurement on ``module`` without a trace on training (see module docstring)."""
    include_cuda = device.type == "cuda"
    with (
        isolate_rng(include_cuda=include_cuda),
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device_type=device.type, enabled=False),
        _tf32_disabled(),
        _eval_mode(module),
        forward_mode_kernels(),
        _fallback_notice_on_rank_zero(),
    ):
        yield
