"""StyleGAN2 synthesis for inference on a CPU: the function ``Generator.synthesize`` computes, computed faster.

The reference (``pipeline/models/stylegan2.py``) modulates each sample's weights and runs rosinality's ops. This renderer
computes the same image differently, one sample at a time:

* the style and the demodulation scale the *weights* (thousands of multiplications, not a pass over a
  million-pixel feature map); bias and the √2 gain ride in the convolution;
* 3×3 convolutions from 32² up run as NNPACK's Winograd (``cpu_conv.conv2d_same``);
* upsampling layers from ``UPSAMPLE_PHASES_MIN_SIZE`` inputs up run as four 3×3 convolutions, one per output
  phase, with the blur folded in (``cpu_conv.upsample_conv_phases``); the noise is added in the pass that
  interleaves the phases (``cpu_conv.pixel_shuffle_add``);
* the large intermediates are written into buffers the renderer owns and reuses from render to render (a fresh
  128 MB tensor costs ~40 ms of page faults on first touch);
* PyTorch's own ops run on the rendering thread alone, NNPACK on its own pool (``nnpack.torch_ops_on_this_thread``).

A renderer is a snapshot: ``CpuRenderer.from_generator(g)`` copies what it needs from ``g``'s parameters and
buffers into its own derived tensors, so changing ``g`` afterwards cannot corrupt it, only leave it rendering the
old weights. The render layer (``pipeline/render/renderer.py``) keeps one per weights version and builds a new
one when the weights change.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pipeline.models.ops import SQRT2, upfirdn2d
from pipeline.render import nnpack
from pipeline.render.cpu_conv import conv2d_same, pixel_shuffle_add, upsample_conv_phases, upsample_fir_phases
from pipeline.render.scratch import Scratch

if TYPE_CHECKING:
    from pipeline.models.stylegan2 import Generator, StyledConv, ToRGB

# From this input size up, an upsampling layer runs as four 3×3 convolutions (one per output phase) through
# NNPACK rather than as a transposed convolution plus blur: 4× the multiplications at ~3× the rate and no blur
# pass; below it the transposed convolution is faster (measured on a 2-core AVX2 EPYC, see docs/BENCHMARKS.md).
UPSAMPLE_PHASES_MIN_SIZE = 64


@dataclass(frozen=True)
class FoldedConv:
    """One ``StyledConv`` (modulated 3×3 conv → noise → bias + leaky ReLU), derived from its weights.

    ``kind`` says how it runs: ``"same"`` (no upsampling; ``weight`` is scale·W ``[Cout,Cin,3,3]``),
    ``"phases"`` (``weight`` holds the four phase kernels ``[4·Cout,Cin,3,3]``, ``bias`` repeated per phase) or
    ``"transposed"`` (``weight`` in the transposed convolution's layout ``[Cin,Cout,3,3]``, then ``blur``)."""

    kind: str
    weight: torch.Tensor
    wsq: torch.Tensor             # Σ over taps of (scale·W)², [Cout,Cin]: demodulation without the weight
    bias: torch.Tensor            # √2·bias
    noise: torch.Tensor           # √2·strength·noise, [1,1,H,W] at the output size
    blur: torch.Tensor | None = None
    blur_pad: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, layer: StyledConv, noise: torch.Tensor, input_size: int) -> FoldedConv:
        conv = layer.conv
        if conv.kernel_size != 3 or not conv.demodulate:
            raise ValueError("a StyledConv is a demodulated 3×3 convolution")
        w = conv.scale * conv.weight[0]  # [Cout,Cin,3,3], a new tensor
        common = {"wsq": w.pow(2).sum([2, 3]), "noise": noise * (layer.noise.weight * SQRT2)}
        bias = layer.activate.bias * SQRT2
        if not conv.upsample:
            return cls("same", w, bias=bias, **common)
        if input_size >= UPSAMPLE_PHASES_MIN_SIZE:
            phases = upsample_conv_phases(w.transpose(0, 1), conv.blur.kernel)
            return cls("phases", phases, bias=bias.repeat_interleave(4), **common)
        return cls("transposed", w.transpose(0, 1).contiguous(), bias=bias, blur=conv.blur.kernel.clone(),
                   blur_pad=conv.blur.pad, **common)

    def demodulation(self, s: torch.Tensor) -> torch.Tensor:
        """√2 / ‖W·s‖ per output channel for the style ``s [Cin]``: ``[Cout]``."""
        return SQRT2 * torch.rsqrt(self.wsq @ s.pow(2) + 1e-8)


@dataclass(frozen=True)
class FoldedToRGB:
    """One ``ToRGB`` (modulated 1×1 conv, no demodulation, plus the upsampled skip image)."""

    weight: torch.Tensor              # scale·W, [3,Cin]
    bias: torch.Tensor                # [1,3,1]
    skip_phases: torch.Tensor | None  # the skip upsampling as four 3×3 filters per channel, [12,1,3,3]

    @classmethod
    def of(cls, layer: ToRGB) -> FoldedToRGB:
        conv = layer.conv
        phases = None
        if hasattr(layer, "upsample"):
            phases = upsample_fir_phases(layer.upsample.kernel, layer.upsample.pad).repeat(3, 1, 1, 1)
        return cls(conv.scale * conv.weight[0, :, :, 0, 0], layer.bias.view(1, 3, 1).clone(), phases)


class CpuRenderer:
    """Renders style vectors to images like ``Generator.synthesize``, on the CPU without autograd.

    Holds its own derived weights (built once by ``from_generator``) and the reusable activation buffers; a
    lock serializes renders, since two renders must not share the buffers. ``nnpack_mode`` (``nnpack.MODES``)
    routes the 3×3 convolutions."""

    def __init__(self, const: torch.Tensor, conv1: FoldedConv, rgb1: FoldedToRGB,
                 blocks: list[tuple[FoldedConv, FoldedConv, FoldedToRGB]], nnpack_mode: str = "direct"):
        self.const, self.conv1, self.rgb1, self.blocks = const, conv1, rgb1, blocks
        self.nnpack_mode = nnpack.check_mode(nnpack_mode)
        self._buffers = Scratch()
        self._lock = threading.Lock()

    @classmethod
    def from_generator(cls, g: Generator, nnpack_mode: str = "direct") -> CpuRenderer:
        """Derive everything the renderer needs from ``g``'s current parameters and buffers (copies: later
        changes to ``g`` do not reach this renderer)."""
        # normal tensors even when built under inference mode (later renders may run outside it); no_grad
        # second, as inference_mode(False) turns autograd back on
        with torch.inference_mode(False), torch.no_grad():
            noise = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
            blocks = [(FoldedConv.of(g.convs[2 * k], noise[2 * k + 1], input_size=2 ** (k + 2)),
                       FoldedConv.of(g.convs[2 * k + 1], noise[2 * k + 2], input_size=2 ** (k + 3)),
                       FoldedToRGB.of(to_rgb))
                      for k, to_rgb in enumerate(g.to_rgbs)]
            return cls(g.input.input.clone(), FoldedConv.of(g.conv1, noise[0], input_size=4),
                       FoldedToRGB.of(g.to_rgb1), blocks, nnpack_mode)

    def render(self, styles: list[torch.Tensor], feature: torch.Tensor | None = None) -> torch.Tensor:
        """Style vectors (``Generator.styles`` order, each ``[B,C_i]``) → images ``[B,3,size,size]``, one sample
        at a time; ``feature`` ``[B,C_r,r,r]`` replaces the ``r``×``r`` block's output as in
        ``Generator.synthesize``. The result is always a new tensor, never one of the reused buffers.

        PyTorch's own ops run on the calling thread alone meanwhile (``nnpack.torch_ops_on_this_thread``): with
        NNPACK's pool beside them, fewer threads than cores stay to share. Measured on the 2-core EPYC under
        other load (1-minute load average 3), paired against PyTorch's two threads: 0.61× the wall time and
        0.63× the CPU time per 1024² render; with it only from the first phase layer on, 0.92×."""
        with self._lock, torch.no_grad(), nnpack.torch_ops_on_this_thread(self.nnpack_mode):
            images = []
            for i in range(styles[0].shape[0]):
                *_, (_, _, image) = self._blocks([s[i] for s in styles], _sample(feature, i))
                images.append(image)
        return images[0] if len(images) == 1 else torch.cat(images)

    def render_feature(self, styles: list[torch.Tensor], resolution: int,
                       injected: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``Generator.feature``: the ``resolution`` block's output and the skip image there, rendering only the
        layers up to it (new tensors, out of the reused buffers); ``injected`` as there."""
        with self._lock, torch.no_grad(), nnpack.torch_ops_on_this_thread(self.nnpack_mode):
            features, images = [], []
            for i in range(styles[0].shape[0]):
                for res, x, image in self._blocks([s[i] for s in styles], _sample(injected, i)):
                    if res == resolution:
                        features.append(x.clone())
                        images.append(image.clone())
                        break
        return torch.cat(features), torch.cat(images)

    def resume(self, styles: list[torch.Tensor], resolution: int, x: torch.Tensor, skip: torch.Tensor,
               feature: torch.Tensor | None = None) -> torch.Tensor:
        """``Generator.resume``: the layers above ``resolution`` from ``render_feature``'s output (the caller's
        tensors, only read) → images ``[B,3,size,size]``, a new tensor."""
        with self._lock, torch.no_grad(), nnpack.torch_ops_on_this_thread(self.nnpack_mode):
            images = []
            for i in range(styles[0].shape[0]):
                start = (resolution, x[i:i + 1].float().contiguous(), skip[i:i + 1].float().contiguous())
                *_, (_, _, image) = self._blocks([s[i] for s in styles], _sample(feature, i), start)
                images.append(image)
        return images[0] if len(images) == 1 else torch.cat(images)

    def buffer_bytes(self) -> int:
        """Memory held by the reused activation buffers."""
        return self._buffers.nbytes()

    def free_buffers(self) -> None:
        """Give the buffers' memory back (the next render allocates them again)."""
        with self._lock:
            self._buffers.clear()

    # --- one sample; every layer reads one buffer and writes another -----------------------------------------

    def _blocks(self, styles: list[torch.Tensor], feature: torch.Tensor | None = None,
                start: tuple[int, torch.Tensor, torch.Tensor] | None = None):
        """One sample, block by block: yields ``(resolution, features, skip image)``; the features live in a
        reused buffer, valid until the next step. Every layer reads one buffer and writes another. ``start``:
        ``(resolution, features, skip image)`` of a block rendered before (the caller's tensors), to go on from."""
        direct = nnpack.available(self.nnpack_mode)  # whether NNPACK can write into our buffers
        if start is None:
            x = self._conv(self.conv1, self.const, styles[0], direct)
            image = self._to_rgb(self.rgb1, x, styles[1], None).clone()  # the first skip image: out of the buffers
            yield 4, x, image
            first = 0
        else:
            resolution, x, image = start
            first = resolution.bit_length() - 3  # the block whose input is `resolution` (4 → 0)
        for k, (up, conv, rgb) in enumerate(self.blocks[first:], start=first):
            if feature is not None and feature.shape[-1] == x.shape[-1]:
                x = feature  # SFE's injected feature: the caller's tensor, never a buffer
            s_up, s_conv, s_rgb = styles[2 + 3 * k: 5 + 3 * k]
            x = self._upsampling_conv(up, x, s_up, direct)  # into buffer "upsampled"
            x = self._conv(conv, x, s_conv, direct)  # into buffer "conv"
            image = self._to_rgb(rgb, x, s_rgb, image)  # a new tensor (the RGB buffer only feeds it)
            yield x.shape[-1], x, image

    def _buffer(self, role: str, shape: tuple[int, ...], reads: torch.Tensor) -> torch.Tensor:
        """The ``role`` buffer as ``shape``; refuses to hand out the buffer that ``reads`` (the layer's input)
        lives in, so no layer can overwrite what it is reading."""
        out = self._buffers.take(role, shape, reads)
        if out.untyped_storage().data_ptr() == reads.untyped_storage().data_ptr():
            raise RuntimeError(f"buffer {role!r} would overwrite the layer's own input")
        return out

    def _conv(self, layer: FoldedConv, x: torch.Tensor, s: torch.Tensor, direct: bool) -> torch.Tensor:
        scale = (layer.demodulation(s)[:, None] * s[None, :])[:, :, None, None]  # [Cout,Cin,1,1]
        out = self._buffer("conv", (1, layer.weight.shape[0], *x.shape[2:]), x) if direct else None
        out = conv2d_same(x, layer.weight * scale, layer.bias, out=out, nnpack_mode=self.nnpack_mode)
        out = out.add_(layer.noise)
        return F.leaky_relu_(out, 0.2)

    def _upsampling_conv(self, layer: FoldedConv, x: torch.Tensor, s: torch.Tensor, direct: bool) -> torch.Tensor:
        demod = layer.demodulation(s)
        height, width = x.shape[2:]
        if layer.kind == "phases":
            scale = (demod.repeat_interleave(4)[:, None] * s[None, :])[:, :, None, None]  # [4·Cout,Cin,1,1]
            out = self._buffer("phases", (1, layer.weight.shape[0], height, width), x) if direct else None
            phases = conv2d_same(x, layer.weight * scale, layer.bias, out=out, nnpack_mode=self.nnpack_mode)
            upsampled = self._buffer("upsampled", (1, phases.shape[1] // 4, 2 * height, 2 * width), phases)
            out = pixel_shuffle_add(phases, layer.noise, out=upsampled)
        else:
            scale = (s[:, None] * demod[None, :])[:, :, None, None]  # [Cin,Cout,1,1]
            out = upfirdn2d(F.conv_transpose2d(x, layer.weight * scale, stride=2), layer.blur, pad=layer.blur_pad,
                            impl="fast")
            out = out.add_(layer.bias.view(1, -1, 1, 1)).add_(layer.noise)
        return F.leaky_relu_(out, 0.2)

    def _to_rgb(self, layer: FoldedToRGB, x: torch.Tensor, s: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        weight = (layer.weight * s[None, :])[None]  # [1,3,Cin]: a 1×1 modulated conv is a matmul
        out = self._buffer("rgb", (1, 3, x.shape[2] * x.shape[3]), x)
        out = torch.baddbmm(layer.bias, weight, x.flatten(2), out=out).view(1, 3, *x.shape[2:])
        if skip is None:
            return out
        # the skip image upsampled as four 3×3 filters on its own grid, interleaved in the pass that adds it
        return pixel_shuffle_add(F.conv2d(skip, layer.skip_phases, padding=1, groups=3), out)


def _sample(tensor: torch.Tensor | None, i: int) -> torch.Tensor | None:
    """Row ``i`` of a batched tensor as a float32 batch of one, contiguous (or None)."""
    return None if tensor is None else tensor[i:i + 1].float().contiguous()
