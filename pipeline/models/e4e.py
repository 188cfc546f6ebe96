"""The e4e encoder (Tov et al., omertov/encoder4editing): aligned face → W+ codes for the FFHQ StyleGAN2.

Module and parameter names equal the official ``e4e_ffhq_encode.pt`` (keys under ``encoder.``), so that file
loads with an explicit key check. An IR-SE-50 backbone with a small feature pyramid feeds one
``GradualStyleBlock`` per W+ row: row 0 predicts a base w, rows 1… predict deltas added to it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import MODEL_INVALID, PipelineError
from pipeline.models.checkpoints import load_state, read_checkpoint
from pipeline.models.stylegan2 import EqualLinear

# units per stage of the IR backbones (stage widths: 1, 2, 4, 8 × width)
BLOCK_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
COARSE_END, MIDDLE_END = 3, 7  # W+ rows 0-2 read 16², rows 3-6 read 32², the rest 64² features


@dataclass(frozen=True)
class Unit:
    in_channel: int
    depth: int
    stride: int


def backbone_units(num_layers: int, width: int) -> list[Unit]:
    if num_layers not in BLOCK_UNITS:
        raise ValueError(f"num_layers must be one of {sorted(BLOCK_UNITS)}, got {num_layers}")
    units, in_channel = [], width
    for stage, count in enumerate(BLOCK_UNITS[num_layers]):
        depth = width * 2 ** stage
        units += [Unit(in_channel, depth, 2)] + [Unit(depth, depth, 1) for _ in range(count - 1)]
        in_channel = depth
    return units


class SEModule(nn.Module):
    """Squeeze-and-excitation: channel gates from globally pooled features."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class BottleneckIR(nn.Module):
    """Pre-activation residual unit of the ArcFace IR nets (``mode='ir_se'`` adds an SE gate, index 5)."""

    def __init__(self, unit: Unit, se: bool):
        super().__init__()
        if unit.in_channel == unit.depth:  # identity, subsampled by a 1×1 max pool (no parameters)
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, unit.stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(unit.in_channel, unit.depth, 1, unit.stride, bias=False), nn.BatchNorm2d(unit.depth))
        layers = [nn.BatchNorm2d(unit.in_channel),
                  nn.Conv2d(unit.in_channel, unit.depth, 3, 1, 1, bias=False), nn.PReLU(unit.depth),
                  nn.Conv2d(unit.depth, unit.depth, 3, unit.stride, 1, bias=False), nn.BatchNorm2d(unit.depth)]
        if se:
            layers.append(SEModule(unit.depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """Strided 3×3 convs down to 1×1, then an equalized linear layer: one W+ row."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c)
        self.out_c = out_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).view(-1, self.out_c))


def upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """FPN merge: bilinear (align_corners=True, as the reference) to ``y``'s size, plus ``y``."""
    return F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """omertov/encoder4editing's ``Encoder4Editing`` at its inference stage (all ``style_count`` deltas on).

    ``width`` (64 in every official model) scales all feature widths; smaller values make tiny test models."""

    def __init__(self, num_layers: int = 50, mode: str = "ir_se", stylegan_size: int = 1024, width: int = 64):
        super().__init__()
        if mode not in ("ir", "ir_se"):
            raise ValueError(f"mode must be 'ir' or 'ir_se', got {mode!r}")
        self.num_layers, self.mode, self.stylegan_size, self.width = num_layers, mode, stylegan_size, width
        self.input_layer = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                         nn.PReLU(width))
        self.body = nn.Sequential(*[BottleneckIR(u, se=mode == "ir_se") for u in backbone_units(num_layers, width)])
        dim = 8 * width
        self.style_count = 2 * int(math.log2(stylegan_size)) - 2
        self.styles = nn.ModuleList(
            GradualStyleBlock(dim, dim, 16 if i < COARSE_END else 32 if i < MIDDLE_END else 64)
            for i in range(self.style_count))
        self.latlayer1 = nn.Conv2d(4 * width, dim, 1)
        self.latlayer2 = nn.Conv2d(2 * width, dim, 1)
        # the reference taps the body after units 6, 20 and 23 (the ends of stages 2-4 of IR-50) whatever the depth
        self.taps = (6, 20, 23)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B,3,256,256]`` in [-1, 1] → W+ offsets from ``latent_avg`` ``[B,style_count,8·width]``."""
        return self.rows(self.trunk(x), 0, self.style_count)

    def trunk(self, x: torch.Tensor) -> Trunk:
        """The backbone and the feature pyramid: everything the W+ rows share."""
        x = self.input_layer(x)
        feats = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps:
                feats[i] = x
        c1, c2, c3 = (feats[i] for i in self.taps)
        p2 = upsample_add(c3, self.latlayer1(c2))
        return Trunk(c3, p2, upsample_add(p2, self.latlayer2(c1)), self.styles[0](c3))

    def rows(self, trunk: Trunk, start: int, stop: int) -> torch.Tensor:
        """W+ rows ``start`` to ``stop`` (exclusive) ``[B,stop-start,8·width]``: row 0 is the base w, each later
        row the base plus its own head's delta. The rows are independent given the trunk, so a caller may take
        the rows the first layers of a render need and the rest later (``E4E.staged``)."""
        out = []
        for i in range(start, stop):
            features = trunk.c3 if i < COARSE_END else trunk.p2 if i < MIDDLE_END else trunk.p1
            out.append(trunk.base if i == 0 else trunk.base + self.styles[i](features))
        return torch.stack(out, dim=1) if out else trunk.base.new_zeros(trunk.base.shape[0], 0, trunk.base.shape[1])


@dataclass(frozen=True)
class Trunk:
    """What every W+ row reads: the 16², 32² and 64² pyramid levels and the base w (row 0)."""

    c3: torch.Tensor
    p2: torch.Tensor
    p1: torch.Tensor
    base: torch.Tensor


class E4E(nn.Module):
    """The encoder plus the generator's mean latent: ``forward(x)`` gives the W+ codes to synthesize from.

    ``channels_last`` stores weights and runs activations NHWC: the same function, and oneDNN's NHWC
    convolutions skip layout reorders (on the 2-core EPYC with torch 2.14, 0.96× the contiguous layout's time,
    paired; ``bench/ports.py`` measures it)."""

    def __init__(self, encoder: Encoder4Editing, latent_avg: torch.Tensor, channels_last: bool = False):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("latent_avg", latent_avg.float().clone())
        self.channels_last = False
        self.set_channels_last(channels_last)

    def set_channels_last(self, enabled: bool) -> None:
        self.channels_last = enabled
        self.encoder.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B,3,256,256]`` in [-1, 1] → codes ``[B,n_latent,512]`` = encoder(x) + latent_avg."""
        return self.encoder(self._layout(x)) + self.latent_avg

    def staged(self, x: torch.Tensor, first: int) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
        """``forward`` in two steps: the codes of the first ``first`` rows ``[B,first,512]`` now, and a function
        that gives the other rows ``[B,n_latent-first,512]`` (each row computed as ``forward`` computes it).
        A render's preview needs only its first layers' rows (14 of 18 for 256² of 1024²); the last heads,
        ~18 % of e4e, can wait until the preview is shown."""
        trunk = self.encoder.trunk(self._layout(x))
        count = self.encoder.style_count
        if not 0 <= first <= count:
            raise ValueError(f"first must be within 0..{count}, got {first}")

        def rest() -> torch.Tensor:
            return self.encoder.rows(trunk, first, count) + self._latent_rows(first, count)

        return self.encoder.rows(trunk, 0, first) + self._latent_rows(0, first), rest

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _latent_rows(self, start: int, stop: int) -> torch.Tensor:
        """``latent_avg`` for rows ``start``..``stop`` ([512] broadcasts to all; [n_latent, 512] is per row)."""
        return self.latent_avg[start:stop] if self.latent_avg.ndim == 2 else self.latent_avg


# --- checkpoints -------------------------------------------------------------------------------------------

PREFIX = "encoder."


def infer_config(state: dict[str, torch.Tensor], source: str) -> dict:
    """Architecture from the encoder's own keys: width, depth, SE or not, and the StyleGAN size it serves."""
    if "input_layer.0.weight" not in state:
        raise PipelineError(MODEL_INVALID, f"{source}: not an e4e encoder (missing key {PREFIX}input_layer.0.weight)")
    units = len({k.split(".")[1] for k in state if k.startswith("body.")})
    depth = {sum(counts): n for n, counts in BLOCK_UNITS.items()}.get(units)
    if depth is None:
        raise PipelineError(MODEL_INVALID, f"{source}: {units} backbone units match no IR-50/100/152 encoder")
    style_count = len([k for k in state if k.startswith("styles.") and k.endswith(".linear.weight")])
    log_size = (style_count + 2) // 2
    if style_count < 2 or 2 * log_size - 2 != style_count:
        raise PipelineError(MODEL_INVALID, f"{source}: {style_count} style heads match no StyleGAN size")
    mode = "ir_se" if any(k.endswith(".res_layer.5.fc1.weight") for k in state) else "ir"
    return {"num_layers": depth, "mode": mode, "stylegan_size": 2 ** log_size,
            "width": state["input_layer.0.weight"].shape[0]}


def load_encoder(path: str | Path, device: str | torch.device = "cpu", channels_last: bool = True) -> E4E:
    """Read the official ``e4e_ffhq_encode.pt`` (``state_dict`` with ``encoder.*`` and ``decoder.*``,
    ``latent_avg``, an ``argparse.Namespace`` of ``opts``) or a file written by ``save_encoder``. Only the
    encoder and ``latent_avg`` are kept; the generator comes from its own checkpoint."""
    # opts is a pickled Namespace in the official file: allow exactly that class, nothing executable
    ckpt = read_checkpoint(path, safe_globals=[argparse.Namespace])
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise PipelineError(MODEL_INVALID, f"{path}: no 'state_dict' (keys: {sorted(ckpt)[:8]})")
    enc_state = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    encoder = Encoder4Editing(**infer_config(enc_state, str(path)))
    load_state(encoder, enc_state, f"{path} ({PREFIX}*)")
    latent_avg = ckpt.get("latent_avg")
    dim = 8 * encoder.width
    # [512] in some files, [n_latent, 512] when saved after e4e's own repeat: both broadcast the same way
    if not isinstance(latent_avg, torch.Tensor) or latent_avg.shape[-1] != dim or latent_avg.ndim > 2 \
            or (latent_avg.ndim == 2 and latent_avg.shape[0] != encoder.style_count):
        shape = list(latent_avg.shape) if isinstance(latent_avg, torch.Tensor) else latent_avg
        raise PipelineError(MODEL_INVALID, f"{path}: latent_avg must be [{dim}] or [{encoder.style_count},{dim}], "
                                           f"got {shape}")
    return E4E(encoder, latent_avg, channels_last=channels_last).to(device).eval()


def save_encoder(path: str | Path, e4e: E4E, opts: dict) -> None:
    """Write the official layout (``state_dict`` with ``encoder.*``, ``latent_avg``, ``opts``) without the
    decoder, which lives in the generator's checkpoint; ``opts`` is stored as a plain dict, not a Namespace."""
    state = {PREFIX + k: v.detach().cpu().contiguous() for k, v in e4e.encoder.state_dict().items()}
    torch.save({"state_dict": state, "latent_avg": e4e.latent_avg.detach().cpu(), "opts": dict(opts)}, Path(path))
