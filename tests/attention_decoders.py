"""Small decoders whose ops forward-mode AD cannot run through as torch picks them: attention
(``nn.MultiheadAttention``'s eval-mode fast path, SDPA's fused CPU kernel, a diffusers attention
block) and custom ``autograd.Function`` s with a backward rule only; and a float64 reverse-mode
reference Jacobian to measure them against."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MHADecoder(nn.Module):
    """``R^m -> R^n`` through ``nn.MultiheadAttention`` over ``tokens`` tokens of width ``d``
    (in eval mode, without gradients, it takes the fused fast path)."""

    def __init__(self, m: int = 6, n: int = 64, tokens: int = 8, d: int = 8) -> None:
        super().__init__()
        self.tokens, self.d = tokens, d
        self.embed = nn.Linear(m, tokens * d)
        self.attention = nn.MultiheadAttention(d, num_heads=2, batch_first=True)
        self.out = nn.Linear(tokens * d, n)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(z)).reshape(-1, self.tokens, self.d)
        a, _ = self.attention(h, h, h, need_weights=False)
        return self.out((h + a).flatten(1))


class SDPADecoder(nn.Module):
    """``R^m -> R^n`` through ``F.scaled_dot_product_attention`` (two heads)."""

    def __init__(self, m: int = 6, n: int = 64, tokens: int = 8, d: int = 8) -> None:
        super().__init__()
        self.tokens, self.d = tokens, d
        self.embed = nn.Linear(m, tokens * d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(tokens * d, n)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(z)).reshape(-1, self.tokens, self.d)
        q, k, v = self.qkv(h).reshape(-1, self.tokens, 3, 2, self.d // 2).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(h.shape)
        return self.out((h + a).flatten(1))


def diffusers_attention(channels: int = 8) -> nn.Module:
    """A diffusers ``Attention`` block over a ``(channels, h, w)`` map, as in the mid-block of
    ``AutoencoderKL`` and ``UNet2DModel``, with its default processor (``AttnProcessor2_0``:
    ``F.scaled_dot_product_attention``); random init, two heads."""
    from diffusers.models.attention_processor import Attention

    return Attention(
        channels,
        heads=2,
        dim_head=channels // 2,
        norm_num_groups=2,
        residual_connection=True,
        bias=True,
        upcast_softmax=True,
        _from_deprecated_attn_block=True,
    )


class DiffusersAttentionDecoder(nn.Module):
    """``R^m -> R^n`` through :func:`diffusers_attention` on an ``(8, 4, 4)`` feature map."""

    def __init__(self, m: int = 6, n: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(m, 8 * 4 * 4)
        self.attention = diffusers_attention(8)
        self.out = nn.Linear(8 * 4 * 4, n)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.attention(torch.tanh(self.embed(z)).reshape(-1, 8, 4, 4)).flatten(1))


class TinyAutoencoderKLDecoder(nn.Module):
    """Flat latents ``(B, 32)`` through a tiny diffusers ``AutoencoderKL.decode`` (random init,
    a mid-block with an attention block and GroupNorms) to ``(B, 1, 8, 8)`` images."""

    def __init__(self) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL(
            in_channels=1,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16),
            latent_channels=2,
            norm_num_groups=4,
            sample_size=8,
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.reshape(-1, 2, 4, 4)).sample


class TinyUNetDenoiser(nn.Module):
    """Flat ``(B, 64)`` images through a tiny diffusers ``UNet2DModel`` (random init, attention
    down and up blocks) at a fixed timestep: a denoiser's map from ``x_t`` to its output."""

    def __init__(self, timestep: int = 10) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.timestep = timestep
        self.unet = UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
            layers_per_block=1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x.reshape(-1, 1, 8, 8), self.timestep).sample


class ChannelsLastGroupNorm(nn.Module):
    """``R^m -> R^n`` through a ``GroupNorm`` on a channels-last ``(16, 4, 4)`` map, the layout a
    diffusers attention block leaves (torch's forward-mode rule for it fails on that layout)."""

    def __init__(self, m: int = 6, n: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(m, 4 * 4 * 16)
        self.norm = nn.GroupNorm(4, 16)
        self.out = nn.Linear(16 * 4 * 4, n)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(z)).reshape(-1, 4, 4, 16).permute(0, 3, 1, 2)
        return self.out(self.norm(h).flatten(1))


class Square(torch.autograd.Function):
    """``x^2`` with a backward rule only, old style (``forward(ctx, x)``, no ``setup_context``,
    no ``jvp``): neither ``torch.func.jvp`` nor ``torch.func.vjp`` accepts it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class NumpySquare(Square):
    """:class:`Square` whose backward goes through numpy: it cannot run under ``vmap`` (a
    batched tensor has no storage), so only one ``torch.autograd.grad`` per output element
    works."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.from_numpy(2 * x.detach().numpy() * grad.detach().numpy())


class FunctionDecoder(nn.Module):
    """``R^m -> R^n``: a tanh MLP with a custom ``autograd.Function`` in the middle; counts its
    calls."""

    def __init__(self, function: type[torch.autograd.Function] = Square, m: int = 5, n: int = 12):
        super().__init__()
        self.function = function
        self.first = nn.Linear(m, 16)
        self.second = nn.Linear(16, n)
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.second(self.function.apply(torch.tanh(self.first(z))))


def reverse_jacobian64(module: nn.Module, z: torch.Tensor) -> np.ndarray:
    """Float64 reference ``(B, n, m)`` by reverse mode on a float64 copy of the module in eval
    mode, with torch's own kernel choices: row ``i`` of every point's Jacobian is the gradient
    of ``sum_b f_i(z_b)`` (one ``torch.autograd.grad`` per output element; the points do not
    interact in eval mode)."""
    ref = copy.deepcopy(module).double().eval()
    x = z.detach().double().requires_grad_(True)
    with torch.enable_grad():
        y = ref(x).reshape(len(x), -1)
        rows = [
            torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)[0] for i in range(y.shape[1])
        ]
    return torch.stack(rows, dim=1).numpy()


def attention_switches() -> tuple[bool, ...]:
    """The global switches :func:`~lightning_memwatch.functional.forward_mode_kernels` sets:
    SDPA's flash, memory-efficient, math and cuDNN backends, the MHA fast path."""
    cuda = torch.backends.cuda
    return (
        cuda.flash_sdp_enabled(),
        cuda.mem_efficient_sdp_enabled(),
        cuda.math_sdp_enabled(),
        cuda.cudnn_sdp_enabled(),
        torch.backends.mha.get_fastpath_enabled(),
    )
