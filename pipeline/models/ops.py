"""StyleGAN2's custom ops in plain PyTorch: a reference implementation and a fast one.

``impl="ref"`` reproduces rosinality/stylegan2-pytorch's CPU path operation for operation (``upfirdn2d_native``
and the ``fused_leaky_relu`` fallback): it is the spec and the test oracle. ``impl="fast"`` computes the same
function with fewer passes over memory: FIR filtering as a depthwise convolution (strided for downsampling,
transposed for upsampling) instead of zero-stuffing and one-channel convolutions over permuted copies.

The CPU renderer's own convolutions (NNPACK, phase decomposition) live in ``pipeline/render/cpu_conv.py``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Impl = Literal["ref", "fast"]
IMPLS: tuple[str, ...] = ("ref", "fast")
SQRT2 = math.sqrt(2.0)


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def make_kernel(taps: list[float] | torch.Tensor) -> torch.Tensor:
    """A 2-D FIR kernel normalized to sum 1; a 1-D list of taps becomes its outer product."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


# --- upfirdn2d: upsample (zero insertion), pad, FIR filter, downsample ---------------------------------------

def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0), impl: Impl = "ref") -> torch.Tensor:
    """Upsample by ``up``, pad by ``pad`` (negative crops) on both axes, convolve with ``kernel``, keep every
    ``down``-th sample. ``x [B,C,H,W]``, ``kernel [kh,kw]``; output ``[B,C,H',W']``."""
    if check_impl(impl) == "ref":
        return _upfirdn2d_ref(x, kernel, up, down, pad[0], pad[1])
    return _upfirdn2d_fast(x, kernel, up, down, pad[0], pad[1])


def _upfirdn2d_ref(x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, p0: int, p1: int) -> torch.Tensor:
    """rosinality's ``upfirdn2d_native`` with equal factors on both axes (how the models call it)."""
    _, channel, in_h, in_w = x.shape
    kh, kw = kernel.shape
    out = x.reshape(-1, in_h, 1, in_w, 1, 1)
    out = F.pad(out, [0, 0, 0, up - 1, 0, 0, 0, up - 1])  # zero insertion
    out = out.view(-1, in_h * up, in_w * up, 1)
    out = F.pad(out, [0, 0, max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    out = out[:, max(-p0, 0): out.shape[1] - max(-p1, 0), max(-p0, 0): out.shape[2] - max(-p1, 0), :]
    out = out.permute(0, 3, 1, 2).reshape(-1, 1, in_h * up + p0 + p1, in_w * up + p0 + p1)
    w = torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(out.dtype)
    out = F.conv2d(out, w)
    out = out.reshape(-1, 1, in_h * up + p0 + p1 - kh + 1, in_w * up + p0 + p1 - kw + 1)
    out = out.permute(0, 2, 3, 1)[:, ::down, ::down, :]
    out_h = (in_h * up + p0 + p1 - kh + down) // down
    out_w = (in_w * up + p0 + p1 - kw + down) // down
    return out.reshape(-1, channel, out_h, out_w)


def _upfirdn2d_fast(x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, p0: int, p1: int) -> torch.Tensor:
    """The same filter as one depthwise convolution per call (groups = channels)."""
    channels = x.shape[1]
    kh, kw = kernel.shape
    if up > 1 and down == 1 and kh == kw:
        # A stride-`up` transposed convolution *is* zero insertion followed by a full convolution with the
        # (unflipped) kernel; it yields (n-1)*up + k samples, from which the padding picks a window.
        weight = kernel.to(x.dtype).expand(channels, 1, kh, kw)
        out = F.conv_transpose2d(x, weight, stride=up, groups=channels)
        crop0, crop1 = kh - 1 - p0, kh - up - p1
        return F.pad(out, [-crop0, -crop1, -crop0, -crop1])
    if up > 1:  # not used by the models; keep the general case exact rather than clever
        return _upfirdn2d_ref(x, kernel, up, down, p0, p1)
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(channels, 1, kh, kw)
    out = F.pad(x, [p0, p1, p0, p1])  # negative pads crop
    return F.conv2d(out, weight, stride=down, groups=channels)


# --- bias + leaky ReLU + gain --------------------------------------------------------------------------------

def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2,
                     scale: float = SQRT2, impl: Impl = "ref") -> torch.Tensor:
    """``leaky_relu(x + bias) * scale``, bias broadcast along dim 1.

    The reference fallback ignores ``negative_slope`` and always uses 0.2; so do we, for parity."""
    if check_impl(impl) == "ref":
        if bias is None:
            return F.leaky_relu(x, negative_slope=0.2) * scale
        rest = [1] * (x.ndim - bias.ndim - 1)
        return F.leaky_relu(x + bias.view(1, bias.shape[0], *rest), negative_slope=0.2) * scale
    # lrelu(v) * s == lrelu(v * s) for s > 0: one allocation, then in-place passes.
    out = x * scale
    if bias is not None:
        out.add_((bias * scale).view(1, bias.shape[0], *([1] * (x.ndim - 2))))
    return F.leaky_relu_(out, 0.2)
