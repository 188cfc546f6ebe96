"""The fast StyleGAN2 ops against the reference ones (the reference itself is pinned by the golden checks)."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.ops import fused_leaky_relu, make_kernel, upfirdn2d


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
