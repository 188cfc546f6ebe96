"""The fast StyleGAN2 ops against the reference ones (the reference itself is pinned by the golden checks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline import nnpack
from pipeline.ops import (
    NNPACK_MIN_SIZE,
    conv2d_same,
    fused_leaky_relu,
    make_kernel,
    pixel_shuffle_add,
    upfirdn2d,
    upsample_conv_phases,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(("up", "down", "pad", "hw"), [
    (1, 1, (1, 1), (9, 9)),      # the blur after a transposed conv
    (2, 1, (2, 1), (8, 8)),      # ToRGB's skip upsampling
    (2, 1, (1, 1), (7, 5)),
    (2, 1, (3, 3), (6, 6)),      # more padding than the transposed conv yields
    (1, 2, (1, 1), (10, 10)),    # downsampling
    (1, 2, (2, 2), (7, 9)),
    (1, 1, (-1, 2), (8, 8)),     # negative pad crops
    (2, 2, (1, 1), (6, 6)),      # up and down together (general path)
])
def test_upfirdn2d_fast_equals_ref(up, down, pad, hw):
    g = torch.Generator().manual_seed(up * 100 + down * 10 + pad[0])
    x = torch.randn(2, 5, *hw, generator=g)
    kernel = torch.rand(4, 4, generator=g)  # asymmetric on purpose: a missing flip shows up
    ref = upfirdn2d(x, kernel, up=up, down=down, pad=pad, impl="ref")
    fast = upfirdn2d(x, kernel, up=up, down=down, pad=pad, impl="fast")
    assert rel_err(fast, ref) < 1e-6


def test_upsample_preserves_a_constant_image():
    # the reference scales the FIR by up**2 so a flat image stays flat (away from the zero-padded border)
    x = torch.full((1, 2, 8, 8), 3.0)
    kernel = make_kernel([1, 3, 3, 1]) * 4
    for impl in ("ref", "fast"):
        out = upfirdn2d(x, kernel, up=2, pad=(2, 1), impl=impl)
        assert out.shape == (1, 2, 16, 16)
        torch.testing.assert_close(out[:, :, 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))


@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 5, 6)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_leaky_relu_fast_equals_ref(shape, with_bias):
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(*shape, generator=g)
    bias = torch.randn(shape[1], generator=g) if with_bias else None
    ref = fused_leaky_relu(x, bias, impl="ref")
    x_before = x.clone()
    fast = fused_leaky_relu(x, bias, impl="fast")
    assert rel_err(fast, ref) < 1e-6
    assert torch.equal(x, x_before), "the fast path must not modify its input"
    assert (ref < 0).any() and (ref > 0).any()


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="impl"):
        upfirdn2d(torch.zeros(1, 1, 4, 4), make_kernel([1, 1]), impl="cuda")


@torch.inference_mode()
@pytest.mark.parametrize("size", [NNPACK_MIN_SIZE - 1, NNPACK_MIN_SIZE, 2 * NNPACK_MIN_SIZE + 3])
def test_conv2d_same_equals_a_padded_convolution(size):
    g = torch.Generator().manual_seed(size)
    x, weight, bias = torch.randn(1, 24, size, size, generator=g), torch.randn(40, 24, 3, 3, generator=g), \
        torch.randn(40, generator=g)
    ours = conv2d_same(x, weight, bias)
    assert rel_err(ours, F.conv2d(x, weight, bias, padding=1)) < 1e-5  # Winograd's float32 rounding, no more
    assert rel_err(conv2d_same(x, weight), F.conv2d(x, weight, padding=1)) < 1e-5


def test_nnpack_is_used_where_it_is_available():
    """On this project's CPUs NNPACK is what makes the fast path fast: a build without it should be noticed."""
    assert nnpack.in_pytorch()


def test_conv2d_same_keeps_autograd():
    x = torch.randn(1, 4, NNPACK_MIN_SIZE, NNPACK_MIN_SIZE, requires_grad=True)
    conv2d_same(x, torch.randn(4, 4, 3, 3)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@torch.inference_mode()
@pytest.mark.parametrize("hw", [(6, 6), (5, 9)])
def test_upsample_phases_equal_transposed_conv_then_blur(hw):
    g = torch.Generator().manual_seed(hw[1])
    x, weight = torch.randn(2, 6, *hw, generator=g), torch.randn(6, 5, 3, 3, generator=g)  # [Cin,Cout,3,3]
    blur = torch.rand(4, 4, generator=g)  # asymmetric: a flipped tap or phase shows up
    ref = upfirdn2d(F.conv_transpose2d(x, weight, stride=2), blur, pad=(1, 1), impl="ref")
    phases = upsample_conv_phases(weight, blur)
    assert phases.shape == (4 * 5, 6, 3, 3)
    ours = F.pixel_shuffle(F.conv2d(x, phases, padding=1), 2)
    assert rel_err(ours, ref) < 1e-5


def test_upsample_phases_refuse_other_layers():
    with pytest.raises(ValueError, match="3×3"):
        upsample_conv_phases(torch.randn(2, 2, 5, 5), torch.rand(4, 4))


@torch.inference_mode()
@pytest.mark.parametrize("addend_shape", [(1, 1, 8, 10), (2, 3, 8, 10), (2, 1, 8, 10)])
def test_pixel_shuffle_add(addend_shape):
    phases, addend = torch.randn(2, 12, 4, 5), torch.randn(addend_shape)
    assert torch.equal(pixel_shuffle_add(phases, addend), F.pixel_shuffle(phases, 2) + addend)
