"""Decoders forward-mode AD cannot run through as torch picks their kernels: attention (measured
in forward mode on the math kernel) and custom ``autograd.Function`` s with a backward only
(measured in reverse mode), against float64 reverse-mode references built in the test."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lightning_memwatch.functional import (
    AutodiffFallbackWarning,
    autodiff,
    forward_mode_kernels,
    jacobian,
    singular_values,
    top_singular_values_and_vector,
)
from lightning_memwatch.functional.autodiff import failing_op, with_fallback
from lightning_memwatch.functional.jacobian import differentiation_mode
from tests.attention_decoders import (
    ChannelsLastGroupNorm,
    DiffusersAttentionDecoder,
    FunctionDecoder,
    MHADecoder,
    NumpySquare,
    SDPADecoder,
    Square,
    TinyAutoencoderKLDecoder,
    TinyUNetDenoiser,
    attention_switches,
    reverse_jacobian64,
)

ATTENTION = {
    "mha": MHADecoder,
    "sdpa": SDPADecoder,
    "diffusers": DiffusersAttentionDecoder,
    "groupnorm": ChannelsLastGroupNorm,
}


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    """Each test starts with no remembered mode and no announced fallback."""
    monkeypatch.setattr(autodiff, "_REMEMBERED", type(autodiff._REMEMBERED)())
    monkeypatch.setattr(autodiff, "_ANNOUNCED", set())


def decoder(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "square":
        return FunctionDecoder(Square).eval()
    if name == "numpy":
        return FunctionDecoder(NumpySquare).eval()
    return ATTENTION[name]().eval()


def plain_jvp(f, z):
    """One batched ``torch.func.jvp``, without :func:`forward_mode_kernels`."""
    tangents = torch.eye(z.shape[1])[:, None].expand(-1, *z.shape)
    with torch.no_grad():
        return torch.func.vmap(lambda t: torch.func.jvp(f, (z,), (t,))[1])(tangents)


@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("mha", "aten::_native_multi_head_attention"),
        ("sdpa", "_scaled_dot_product_flash_attention_for_cpu"),
        ("diffusers", "_scaled_dot_product_flash_attention_for_cpu"),
        ("groupnorm", "RuntimeError: view size is not compatible with input tensor's size and"),
        ("square", "the custom torch.autograd.Function Square"),
    ],
)
def test_plain_forward_mode_fails_on_these_decoders_and_the_op_is_named(name, op):
    """What the package routes around: plain jvp fails, and the op is read from the error."""
    with pytest.raises((RuntimeError, NotImplementedError)) as error:
        plain_jvp(decoder(name), torch.randn(2, 6 if name in ATTENTION else 5))
    assert failing_op(error.value).startswith(op)


def test_the_diffusers_block_runs_its_default_sdpa_processor():
    assert type(decoder("diffusers").attention.processor).__name__ == "AttnProcessor2_0"


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("mha", "forward"),
        ("sdpa", "forward"),
        ("diffusers", "forward"),
        ("groupnorm", "forward"),
        ("square", "grad"),  # torch.func refuses a Function without setup_context
        ("numpy", "grad-loop"),  # its backward cannot run under vmap
    ],
)
def test_jacobian_equals_the_float64_reverse_mode_reference(name, mode):
    f = decoder(name)
    z = torch.randn(7, 6 if name in ATTENTION else 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AutodiffFallbackWarning)
        assert differentiation_mode(f, z) == mode
        jac = jacobian(f, z, chunk_size=3)
    ref = reverse_jacobian64(f, z)
    assert jac.shape == ref.shape
    np.testing.assert_allclose(jac.numpy(), ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("name", ["mha", "sdpa", "diffusers", "groupnorm", "square"])
def test_singular_values_exact_and_top_k_equal_the_reference(name):
    f = decoder(name)
    m = 6 if name in ATTENTION else 5
    z = torch.randn(5, m)
    ref = np.linalg.svd(reverse_jacobian64(f, z), compute_uv=False)
    vh = np.linalg.svd(reverse_jacobian64(f, z))[2][:, 0]
    scale = ref.max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AutodiffFallbackWarning)
        exact = singular_values(f, z)
        top = singular_values(f, z, top_k=3)
        # a 4-dimensional Krylov start block: the top-k path, not a block spanning R^m
        top2, v = top_singular_values_and_vector(f, z, 2, oversample=2, iterations=2)
    np.testing.assert_allclose(exact.numpy(), ref, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(top.numpy(), ref[:, :3], rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(top2.numpy(), ref[:, :2], rtol=1e-3, atol=1e-6 * scale)
    np.testing.assert_allclose(np.abs((v.numpy() * vh).sum(-1)), 1.0, atol=1e-3)


def test_the_fallback_is_announced_once_naming_the_op_and_decided_once():
    f = decoder("square")
    z = torch.randn(6, 5)
    with pytest.warns(AutodiffFallbackWarning, match=r"Square.*n = 12.*m = 5") as caught:
        jacobian(f, z)
    assert sum(issubclass(w.category, AutodiffFallbackWarning) for w in caught) == 1
    f.calls = 0
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        singular_values(f, z, chunk_size=2)
        singular_values(f, z, top_k=2, chunk_size=2)
    assert not [w for w in again if issubclass(w.category, AutodiffFallbackWarning)]
    # remembered: one decoder pass per chunk of 2 points (3 chunks) for the exact path, and as
    # many for the top-k path; never a failing jvp again
    assert f.calls == 3 + 3


def test_a_fallback_under_no_grad_and_inference_mode_writes_no_grad():
    f = decoder("square")
    f.train()  # parameters that require grad, as in training
    z = torch.randn(4, 5)
    ref = reverse_jacobian64(f, z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AutodiffFallbackWarning)
        with torch.no_grad():
            under_no_grad = jacobian(f, z)
            assert not torch.is_grad_enabled()
        with torch.inference_mode():
            under_inference = jacobian(f, z.clone())
            assert torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    for jac in (under_no_grad, under_inference):
        np.testing.assert_allclose(jac.numpy(), ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    assert all(p.grad is None for p in f.parameters())
    assert f.training


def test_the_attention_switches_are_set_inside_and_restored_after():
    before = attention_switches()
    assert before == (True, True, True, True, True)  # torch's defaults
    with forward_mode_kernels():
        assert attention_switches() == (False, False, True, False, False)
    assert attention_switches() == before
    with pytest.raises(KeyError), forward_mode_kernels():
        raise KeyError("raised inside")
    assert attention_switches() == before
    # the GroupNorm mode is gone too: plain jvp fails on the channels-last input again
    f, z = decoder("groupnorm"), torch.randn(2, 6)
    with forward_mode_kernels():
        plain_jvp(f, z)
    with pytest.raises(RuntimeError, match="view size"):
        plain_jvp(f, z)


def test_switches_and_grad_mode_are_restored_after_a_measurement_that_raises():
    class Broken(torch.nn.Module):
        def forward(self, z):
            raise ValueError("the user's own error")

    before = attention_switches()
    with pytest.raises(ValueError, match="the user's own error"):
        jacobian(Broken(), torch.randn(2, 3), chunk_size=1)
    with torch.no_grad(), pytest.raises(ValueError, match="the user's own error"):
        singular_values(Broken(), torch.randn(2, 3), top_k=1, chunk_size=1)
    assert attention_switches() == before
    assert torch.is_grad_enabled()
    for name in ATTENTION:
        jacobian(decoder(name), torch.randn(2, 6))
        assert attention_switches() == before


def test_an_error_that_is_not_about_autodiff_is_raised_at_once():
    calls = []

    def f(z):
        calls.append(1)
        raise TypeError("not an autodiff failure")

    with pytest.raises(TypeError):
        jacobian(f, torch.randn(2, 3))
    assert len(calls) == 1


def test_a_decoder_no_mode_can_differentiate_raises_its_error():
    class NoDerivative(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * x

    f = FunctionDecoder(NoDerivative).eval()
    with pytest.raises(NotImplementedError, match="backward") as error:
        differentiation_mode(f, torch.randn(2, 5))
    # the forward-mode failure comes with it, as the cause
    assert "setup_context" in str(error.value.__cause__)


def test_with_fallback_moves_down_remembers_and_lets_oom_through():
    def fails():
        raise RuntimeError("Trying to use forward AD with aten::made_up that does not support it")

    def oom():
        raise torch.cuda.OutOfMemoryError("out of memory")

    def f(z):
        return z

    z = torch.randn(2, 3)
    with pytest.warns(AutodiffFallbackWarning, match="aten::made_up"):
        assert with_fallback(f, z, [fails, fails, lambda: "third"]) == ("third", 2)
    # remembered: the first two are not tried again
    assert with_fallback(f, z, [oom, oom, lambda: "again"]) == ("again", 2)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        with_fallback(lambda z: z, z, [oom, lambda: "never"])


def test_the_older_torch_branches_set_the_same_switches(monkeypatch):
    """torch < 2.3 has no ``torch.nn.attention.sdpa_kernel`` (the switches are then set one by
    one) and older releases no ``torch.backends.mha.set_fastpath_enabled`` (the fast path then
    stays on)."""
    monkeypatch.delattr(torch.nn.attention, "sdpa_kernel")  # the import fails
    monkeypatch.delattr(torch.backends.mha, "set_fastpath_enabled")
    before = attention_switches()
    f = decoder("sdpa")
    z = torch.randn(3, 6)
    with forward_mode_kernels():
        assert attention_switches() == (False, False, True, False, True)
        jac = plain_jvp(f, z).permute(1, 2, 0)  # the SDPA decoder runs in forward mode
    assert attention_switches() == before
    ref = reverse_jacobian64(f, z)
    np.testing.assert_allclose(jac.numpy(), ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize(
    ("build", "m"), [(TinyAutoencoderKLDecoder, 32), (TinyUNetDenoiser, 64)], ids=["vae", "unet"]
)
def test_diffusers_models_are_differentiated_in_forward_mode(build, m):
    """diffusers' AutoencoderKL decoder and UNet2DModel (attention blocks, GroupNorms after
    them): plain jvp fails on them; the package's forward mode equals the float64 reference."""
    torch.manual_seed(0)
    f = build().eval()
    z = torch.randn(3, m)
    with pytest.raises(RuntimeError):
        plain_jvp(f, z)
    assert differentiation_mode(f, z) == "forward"
    jac = jacobian(f, z)
    ref = reverse_jacobian64(f, z)
    np.testing.assert_allclose(jac.numpy(), ref, rtol=0, atol=2e-6 * np.abs(ref).max())
