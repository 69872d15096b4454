"""Kernels that forward-mode AD runs through, switched on for a measurement only.

A few of the kernels torch picks by default have a backward rule and no forward-mode one, or a
forward-mode rule that fails on some layouts: the fused attention kernels, the eval-mode fast
path of ``nn.MultiheadAttention``, and ``group_norm`` on a channels-last input (what a diffusers
attention block hands the next ``GroupNorm``). :func:`forward_mode_kernels` routes around all
three, so the Jacobians of diffusers' ``AutoencoderKL`` and ``UNet2DModel`` are computed in
forward mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _ContiguousGroupNorm(TorchFunctionMode):
    """``group_norm`` (``F.group_norm``, ``torch.group_norm``) with a contiguous input.

    torch's forward-mode rule for ``group_norm`` views its input, which fails ("view size is not
    compatible with input tensor's size and stride") on a channels-last layout: the output of a
    diffusers attention block (``transpose(-1, -2).reshape(...)``) or of a ``channels_last``
    model. ``contiguous()`` changes the layout, not the values or the derivative.
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func is F.group_norm or func is torch.group_norm:
            if args:
                args = (args[0].contiguous(), *args[1:])
            elif "input" in kwargs:
                kwargs["input"] = kwargs["input"].contiguous()
        return func(*args, **kwargs)


@contextmanager
def _math_attention() -> Iterator[None]:
    """SDPA on its math kernel only, the enabled backends restored on exit."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: the same global switches, one by one
        with _math_attention_switches():
            yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


@contextmanager
def _math_attention_switches() -> Iterator[None]:
    cuda = torch.backends.cuda
    others = [
        name for name in ("flash", "mem_efficient", "cudnn") if hasattr(cuda, f"{name}_sdp_enabled")
    ]
    saved = {name: getattr(cuda, f"{name}_sdp_enabled")() for name in [*others, "math"]}
    try:
        for name in others:
            getattr(cuda, f"enable_{name}_sdp")(False)
        cuda.enable_math_sdp(True)
        yield
    finally:
        for name, enabled in saved.items():
            getattr(cuda, f"enable_{name}_sdp")(enabled)


@contextmanager
def _mha_fast_path_off() -> Iterator[None]:
    """``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` fast paths off, restored on exit.

    ``torch.backends.mha.set_fastpath_enabled`` is missing from older torch releases; there the
    fast path stays on and such a decoder is measured by the reverse-mode fallback (the fast path
    is never taken while gradients are recorded, so reverse mode runs through the plain ops).
    """
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    saved = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(saved)


@contextmanager
def forward_mode_kernels() -> Iterator[None]:
    """Kernels that forward-mode AD (``torch.func.jvp``) runs through, in the block only.

    - ``F.scaled_dot_product_attention`` on its math kernel
      (``torch.nn.attention.sdpa_kernel([SDPBackend.MATH])``; before torch 2.3 the
      ``torch.backends.cuda.enable_*_sdp`` switches it sets): the fused kernels it picks by
      default (``_scaled_dot_product_flash_attention_for_cpu`` on CPU, used by diffusers'
      attention processors) have no forward-mode rule;
    - the ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` fast paths off
      (``torch.backends.mha.set_fastpath_enabled(False)``, where it exists): the eval-mode fast
      paths (``aten::_native_multi_head_attention``) have none either;
    - ``group_norm`` handed a contiguous input (:class:`_ContiguousGroupNorm`).

    The first two are global switches, put back on exit, also when the block raises; the third
    is a ``TorchFunctionMode`` of this thread. The values are the same up to rounding, and
    training outside the block keeps its fused kernels.

    Example::

        >>> import torch
        >>> attention = torch.nn.MultiheadAttention(4, 2, batch_first=True).eval()
        >>> def f(z):
        ...     h = z.reshape(-1, 2, 4)
        ...     return attention(h, h, h, need_weights=False)[0].flatten(1)
        >>> z, t = torch.randn(1, 8), torch.randn(1, 8)
        >>> with forward_mode_kernels(), torch.no_grad():
        ...     jv = torch.func.jvp(f, (z,), (t,))[1]
        >>> jv.shape
        torch.Size([1, 8])
    """
    with _math_attention(), _mha_fast_path_off(), _ContiguousGroupNorm():
        yield
