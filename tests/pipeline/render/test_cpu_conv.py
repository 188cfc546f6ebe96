"""The CPU renderer's convolutions: NNPACK's within float32 rounding of a padded convolution, the phase
decompositions equal to the reference ops they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.ops import upfirdn2d
from pipeline.render import nnpack
from pipeline.render.cpu_conv import NNPACK_MIN_SIZE, conv2d_same, pixel_shuffle_add, upsample_conv_phases


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max() / b.abs().max())


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
