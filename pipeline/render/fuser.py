"""StyleFeatureEditor's fuser and Feature Editor (``models/sfe.FeatureFuser``) on a CPU without autograd.

Both are five residual blocks of two 3×3 convolutions at 512×64², as much arithmetic as a whole 1024² render
(~100 GMAC), and PyTorch sends batch-1 convolutions to oneDNN's direct algorithm. ``CpuFuser`` runs the same
blocks with the render layer's convolution (``cpu_conv.conv2d_same``: NNPACK's Winograd, ~2.4× faster at 64²
here) and each convolution's following BatchNorm folded into its weights and bias (exact in eval mode). The
BatchNorm *before* a block's first convolution stays a per-channel scale and shift: folded into the weights it
would also scale the zero padding's border. Results within float32 rounding of Winograd (the golden checks
hold the SFE fixture's features to it on this path). A snapshot of the module's weights, like the renderers:
``FuserRenderer`` rebuilds it when the weights' version moves.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pipeline.render.cpu_conv import conv2d_same

if TYPE_CHECKING:
    from pipeline.models.sfe import FeatureFuser


def _bn_affine(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x·scale + shift`` per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@dataclass(frozen=True)
class _Block:
    in_scale: torch.Tensor  # [1,C,1,1], the BatchNorm before the first convolution
    in_shift: torch.Tensor
    w1: torch.Tensor  # the first convolution with the BatchNorm after it folded in
    b1: torch.Tensor
    prelu: torch.Tensor  # [C]
    w2: torch.Tensor  # the second convolution with the closing BatchNorm folded in
    b2: torch.Tensor


class CpuFuser:
    """``FeatureFuser``'s forward and ``merge`` for CPU float32 tensors, from a snapshot of its weights."""

    def __init__(self, conv: tuple[torch.Tensor, torch.Tensor], blocks: list[_Block], nnpack_mode: str):
        self.conv_w, self.conv_b = conv
        self.blocks, self.nnpack_mode = blocks, nnpack_mode

    @classmethod
    @torch.no_grad()
    def from_module(cls, fuser: FeatureFuser, nnpack_mode: str = "direct") -> CpuFuser:
        blocks = []
        for block in fuser.body:
            bn0, conv1, bn2, prelu, conv4, bn5 = block.body
            in_scale, in_shift = _bn_affine(bn0)
            s2, t2 = _bn_affine(bn2)
            s5, t5 = _bn_affine(bn5)
            blocks.append(_Block(
                in_scale.view(1, -1, 1, 1).float().clone(), in_shift.view(1, -1, 1, 1).float().clone(),
                (conv1.weight * s2.view(-1, 1, 1, 1)).float().contiguous(), t2.float().clone(),
                prelu.weight.float().clone(),
                (conv4.weight * s5.view(-1, 1, 1, 1)).float().contiguous(), t5.float().clone()))
        conv_b = fuser.conv.bias if fuser.conv.bias is not None else torch.zeros(fuser.conv.out_channels)
        return cls((fuser.conv.weight.float().clone(), conv_b.float().clone()), blocks, nnpack_mode)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.conv_w, self.conv_b)  # the 1×1 merge of the two stacked maps
        for b in self.blocks:
            y = torch.addcmul(b.in_shift, x, b.in_scale)
            y = F.prelu(conv2d_same(y, b.w1, b.b1, nnpack_mode=self.nnpack_mode), b.prelu)
            x = x + conv2d_same(y, b.w2, b.b2, nnpack_mode=self.nnpack_mode)
        return x

    def merge(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self(torch.cat([a, b], dim=1))


class FuserRenderer:
    """Runs a ``FeatureFuser`` by the path that fits: ``CpuFuser`` for CPU float32 tensors without autograd (a
    snapshot rebuilt when the module's weights change: ``weights_version``), else the module itself."""

    def __init__(self, fuser: FeatureFuser, nnpack_mode: str = "direct"):
        self.fuser, self.nnpack_mode = fuser, nnpack_mode
        self._modules = list(fuser.modules())
        self._lock = threading.Lock()
        self._cpu: tuple[tuple, CpuFuser] | None = None

    def fast(self, x: torch.Tensor) -> bool:
        """Whether ``x`` goes through ``CpuFuser``."""
        return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
                and not self.fuser.training and self.nnpack_mode != "off")

    def merge(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``FeatureFuser.merge``: the two feature maps ``[B,C,H,W]`` → one."""
        if not self.fast(a):
            return self.fuser.merge(a, b)
        return self.cpu().merge(a, b)

    def cpu(self) -> CpuFuser:
        from pipeline.render.renderer import weights_version

        version = weights_version(self._modules)
        with self._lock:
            if self._cpu is None or self._cpu[0] != version:
                self._cpu = (version, CpuFuser.from_module(self.fuser, self.nnpack_mode))
            return self._cpu[1]
