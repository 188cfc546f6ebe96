"""The dense convolutions of the CPU renderer (``pipeline/render/cpu.py``), for inference only.

``conv2d_same`` sends large 3×3 convolutions to NNPACK's Winograd (its ``nnpack`` mode, see
``pipeline.render.nnpack``); ``upsample_conv_phases`` turns a transposed convolution plus blur into four stride-1
convolutions on the input grid, ``upsample_fir_phases`` does the same for a FIR upsampling, and
``pixel_shuffle_add`` interleaves the phases while adding. The phase kernels are read off the reference ops'
impulse responses (``pipeline.models.ops.upfirdn2d``), so the reference defines them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.models.ops import upfirdn2d
from pipeline.render import nnpack

# Below this spatial size NNPACK's per-call kernel transform costs more than the convolution saves (measured on
# a 2-core AVX2 EPYC: at 16×16 oneDNN wins, from 32×32 up NNPACK's Winograd is 2–3.4× faster).
NNPACK_MIN_SIZE = 32


def conv2d_same(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                out: torch.Tensor | None = None, nnpack_mode: str = "direct") -> torch.Tensor:
    """A stride-1 convolution with "same" padding for an odd square kernel, for inference; returns ``out``
    when it could write there (one image through NNPACK), else a new tensor.

    PyTorch routes batch-1 convolutions to oneDNN's direct algorithm; NNPACK's Winograd transform does a 3×3
    convolution with ~3× fewer multiplications, so large batch-1 feature maps go there (PyTorch only picks
    NNPACK itself for batches of 16 and more). Same function, results within float32 rounding of Winograd.
    ``nnpack_mode`` (``nnpack.MODES``): ``off`` leaves every convolution to PyTorch's default; ``torch`` never
    writes into ``out``."""
    k = weight.shape[-1]
    if (nnpack.check_mode(nnpack_mode) != "off" and x.device.type == "cpu" and x.dtype == torch.float32 and k == 3
            and min(x.shape[-2:]) >= NNPACK_MIN_SIZE and not torch.is_grad_enabled() and nnpack.in_pytorch()):
        x, weight = x.contiguous(), weight.contiguous()
        bias = x.new_zeros(weight.shape[0]) if bias is None else bias.contiguous()
        if out is not None and nnpack_mode == "direct" and nnpack.conv3x3_into(x, weight, bias, out):
            return out
        return torch._nnpack_spatial_convolution(x, weight, bias, [k // 2, k // 2])
    return F.conv2d(x, weight, bias, padding=k // 2)


# An impulse at input (2, 2) of a 5×5 grid: its 10×10 upsampled response holds every tap a 2× upsampling with
# a kernel of at most 6 taps on the upsampled grid (3 input pixels) can have.
_GRID, _AT = 5, 2


def _phases_of(response: torch.Tensor) -> torch.Tensor:
    """Read 3×3 phase kernels off the response ``[..., 10, 10]`` of a 2× upsampling to a unit impulse at
    ``(_AT, _AT)``: output ``2m+a`` reads input ``m+k-1`` through tap ``k``, so the impulse lands on tap ``k`` at
    ``m = _AT+1-k``. Returns ``[2, 2, ..., 3, 3]`` (row phase, column phase). A response reaching further than
    one input pixel either side is not such an upsampling and is refused."""
    if response.shape[-2:] != (2 * _GRID, 2 * _GRID):
        raise ValueError(f"the upsampling gives {tuple(response.shape[-2:])} from {_GRID}², not twice the size")
    rows = [[2 * (_AT + 1 - tap) + phase for tap in range(3)] for phase in range(2)]
    support = torch.zeros(2 * _GRID, dtype=torch.bool)
    support[2 * (_AT - 1): 2 * (_AT + 2)] = True
    if response[..., ~support, :].abs().max() > 0 or response[..., :, ~support].abs().max() > 0:
        raise ValueError("the upsampling reaches beyond one input pixel either side")
    return torch.stack([torch.stack([response[..., rows[a], :][..., rows[b]] for b in range(2)]) for a in range(2)])


def upsample_conv_phases(weight: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
    """A stride-2 transposed 3×3 convolution followed by the 4-tap blur (padding 1, 1), as four 3×3
    convolutions on the *input* grid, one per output phase: ``weight [Cin,Cout,3,3]`` (transposed-conv layout)
    → ``[4·Cout,Cin,3,3]`` ordered for ``pixel_shuffle(…, 2)``.

    The phase kernels are read off the reference computation's impulse response (the transposed convolution
    of a unit impulse at ``(i, i)`` is the kernel itself placed at ``(2i, 2i)``), so they are right by
    construction."""
    cin, cout, k, _ = weight.shape
    if k != 3 or blur.shape != (4, 4):
        raise ValueError(f"expected a 3×3 weight and a 4×4 blur, got {tuple(weight.shape)} and {tuple(blur.shape)}")
    placed = weight.new_zeros(cin, cout, 2 * _GRID + 1, 2 * _GRID + 1)
    placed[:, :, 2 * _AT: 2 * _AT + k, 2 * _AT: 2 * _AT + k] = weight
    phases = _phases_of(upfirdn2d(placed, blur, pad=(1, 1)))  # [2,2,Cin,Cout,3,3]
    return phases.permute(3, 0, 1, 2, 4, 5).reshape(4 * cout, cin, 3, 3).contiguous()


def upsample_fir_phases(kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """``upfirdn2d(x, kernel, up=2, pad=pad)`` for each channel as four 3×3 filters on the input grid:
    ``[4,1,3,3]`` in ``pixel_shuffle`` order; for ``C`` channels repeat it ``C`` times and convolve with
    ``groups=C``, padding 1."""
    impulse = kernel.new_zeros(1, 1, _GRID, _GRID)
    impulse[0, 0, _AT, _AT] = 1
    return _phases_of(upfirdn2d(impulse, kernel, up=2, pad=pad)[0, 0]).reshape(4, 1, 3, 3).contiguous()


def pixel_shuffle_add(phases: torch.Tensor, addend: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``pixel_shuffle(phases, 2) + addend`` in one pass over memory (``addend`` broadcasts like
    ``[B|1, C|1, 2H, 2W]``): the shuffle is a strided view that the addition reads from. Written to ``out``
    (contiguous ``[B, C, 2H, 2W]``, not overlapping the inputs) when given."""
    if torch.is_grad_enabled() and (phases.requires_grad or addend.requires_grad):  # out= does not record
        return F.pixel_shuffle(phases, 2) + addend
    batch, c4, height, width = phases.shape
    c = c4 // 4
    if out is None:
        out = phases.new_empty(batch, c, 2 * height, 2 * width)
    view = phases.view(batch, c, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
    addend = addend.reshape(*addend.shape[:2], height, 2, width, 2)
    torch.add(view, addend, out=out.view(batch, c, height, 2, width, 2))
    return out
