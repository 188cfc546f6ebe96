"""StyleFeatureEditor's networks (Bobkov et al., CVPR 2024; ControlGenAI/StyleFeatureEditor): the Inverter and
the Feature Editor, with the parameter names of the official ``sfe_editor_light.pt``.

SFE inverts a face into W+ *and* a feature map that replaces the generator's own at 64²
(``Generator.feature`` and ``Generator.synthesize(styles, feature=...)`` in ``pipeline/models/stylegan2.py``), so
the details W+ cannot hold come back. Three networks, all plain convolutions:

* ``FeatureBackbone`` (the reference's ``FSLikeBackbone``): an ArcFace iResNet-50 whose third stage keeps its
  resolution, read at four depths into 18 linear heads (W+), and at the third into ``content_layer`` (the
  predicted 64² feature);
* the fuser: merges that prediction with the generator's own 64² feature for the predicted W+;
* the Feature Editor: adapts the fused feature to an edit, given how the edit changes the generator's 64² feature
  (``feature_editor(cat([fused, Δ]))``; an inversion is the edit with Δ = 0).

The fuser and the Feature Editor are the same architecture (``FeatureFuser``, the reference's
``ContentLayerDeepFast``). ``load_sfe`` reads the official file; widths and depths come from its shapes, so a
tiny development model in the same layout loads through the same code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import MODEL_INVALID, PipelineError
from pipeline.models.checkpoints import load_state, read_checkpoint
from pipeline.models.stylegan2 import Generator

# A partial render to a resolution: style vectors, resolution → (feature, skip image), as ``Generator.feature``.
FeatureRender = Callable[[list[torch.Tensor], int], tuple[torch.Tensor, torch.Tensor]]
# Two stacked feature maps → one, as ``FeatureFuser.merge`` (the fuser, the Feature Editor).
Merge = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The official file's prefixes: the phase-1 Inverter under ``inverter.``, the Feature Editor under ``encoder.``
# (the reference's name for its trainable part).
INVERTER_PREFIX, EDITOR_PREFIX = "inverter.", "encoder."
# The other parts of the reference's ``FSEFull``, present in its full training checkpoints: the reference loads
# the generator and e4e from their own files and uses the discriminator only in training; it ignores these.
REFERENCE_OTHER_PARTS = ("decoder.", "e4e_encoder.", "discriminator.")
# The heads read 3×3 average-pooled maps of each stage.
POOL = 3
INPUT_SIZE = 256  # what the Inverter sees (a bilinear resize of the aligned crop)
# where the feature is predicted and injected: the stem and the stages' strides (1; 2, 2, 1, 2) leave 256 / 4
FEATURE_RESOLUTION = INPUT_SIZE // 4


@dataclass(frozen=True)
class SFEConfig:
    """Widths and depths; the defaults are the official model's (iResNet-50, 18 W+ rows of 512, 512-channel
    64² features, fuser and editor of 5 residual blocks each)."""

    stem: int = 64
    stages: tuple[tuple[int, int], ...] = ((64, 3), (128, 4), (256, 14), (512, 3))  # (width, blocks)
    n_styles: int = 18
    style_dim: int = 512
    feature_channels: int = 512
    fuser_blocks: int = 5
    editor_blocks: int = 5


# --- the backbone ------------------------------------------------------------------------------------------

class IBasicBlock(nn.Module):
    """ArcFace's pre-activation residual block: BN → conv3×3 → BN → PReLU → conv3×3 (stride) → BN, plus the
    input (through a strided 1×1 conv + BN where the shape changes). Nothing after the sum."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


def iresnet_stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(IBasicBlock(in_channels, channels, stride),
                         *[IBasicBlock(channels, channels, 1) for _ in range(blocks - 1)])


class FeatureBackbone(nn.Module):
    """Image ``[B,3,256,256]`` → (W+ offsets from ``latent_avg`` ``[B,n_styles,style_dim]``, predicted feature
    ``[B,feature_channels,64,64]``).

    iResNet stages at 128², 64², 64², 32²: SFE drops the third stage's stride (``block_3``) so the feature is
    predicted at 64², where the generator takes it."""

    def __init__(self, cfg: SFEConfig):
        super().__init__()
        if len(cfg.stages) != 4:
            raise ValueError(f"the backbone has 4 stages, got {len(cfg.stages)}")
        self.conv = nn.Sequential(nn.Conv2d(3, cfg.stem, 3, 1, 1, bias=False), nn.BatchNorm2d(cfg.stem),
                                  nn.PReLU(cfg.stem))
        in_channels = cfg.stem
        for i, ((width, blocks), stride) in enumerate(zip(cfg.stages, (2, 2, 1, 2), strict=True), start=1):
            setattr(self, f"block_{i}", iresnet_stage(in_channels, width, blocks, stride))
            in_channels = width
        mid, feat = cfg.stages[2][0], cfg.feature_channels
        self.content_layer = nn.Sequential(
            nn.BatchNorm2d(mid), nn.Conv2d(mid, feat, 3, 1, 1, bias=False), nn.BatchNorm2d(feat), nn.PReLU(feat),
            nn.Conv2d(feat, feat, 3, 1, 1, bias=False), nn.BatchNorm2d(feat))
        pooled = sum(width for width, _ in cfg.stages) * POOL * POOL
        self.styles = nn.ModuleList(nn.Linear(pooled, cfg.style_dim) for _ in range(cfg.n_styles))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(x)
        pooled = []
        for i in range(1, 5):
            x = getattr(self, f"block_{i}")(x)
            if i == 3:
                content = self.content_layer(x)
            # adaptive bins [floor(i·n/3), ceil((i+1)·n/3)): they overlap where 3 does not divide n
            pooled.append(F.adaptive_avg_pool2d(x, POOL))
        flat = torch.cat(pooled, dim=1).flatten(1)  # channel-major, as the heads were trained
        return torch.stack([head(flat) for head in self.styles], dim=1), content


# --- the fuser and the Feature Editor ----------------------------------------------------------------------

class FeatureBlock(nn.Module):
    """The residual branch: BN → conv3×3 → BN → PReLU → conv3×3 → BN (``body.0`` … ``body.5``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
            nn.PReLU(channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FeatureFuser(nn.Module):
    """Two stacked feature maps ``[B,2C,H,W]`` → one ``[B,C,H,W]``: a 1×1 conv, then residual blocks
    (``x + block(x)``). The fuser (inputs: predicted, generator's) and the Feature Editor (inputs: fused, edit
    delta) are both this."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 1)
        self.body = nn.ModuleList(FeatureBlock(channels) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        for block in self.body:
            x = x + block(x)
        return x

    def merge(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self(torch.cat([a, b], dim=1))


class Inverter(nn.Module):
    """Phase 1 of SFE: the backbone and the fuser (the official file's ``inverter.*``)."""

    def __init__(self, cfg: SFEConfig):
        super().__init__()
        self.fs_backbone = FeatureBackbone(cfg)
        self.fuser = FeatureFuser(cfg.feature_channels, cfg.fuser_blocks)


class SFE(nn.Module):
    """The Inverter and the Feature Editor of one checkpoint, and the two steps that use them with the
    generator: ``invert`` (W+ and the fused feature) and ``edit_feature`` (the feature to render, from
    ``feature_delta``)."""

    def __init__(self, cfg: SFEConfig = SFEConfig()):
        super().__init__()
        self.cfg = cfg
        self.inverter = Inverter(cfg)
        self.feature_editor = FeatureFuser(cfg.feature_channels, cfg.editor_blocks)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The official file's ``state_dict`` layout (``inverter.*``, ``encoder.*``)."""
        state = {INVERTER_PREFIX + k: v for k, v in self.inverter.state_dict().items()}
        state.update({EDITOR_PREFIX + k: v for k, v in self.feature_editor.state_dict().items()})
        return state

    def load_checkpoint_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load an official ``state_dict``: ``inverter.*`` into the Inverter, ``encoder.*`` into the Feature
        Editor, each with the explicit key check. Keys of the reference's other parts are left alone, as the
        reference leaves them; any other key is a mismatch."""
        others = [k for k in state if not k.startswith((INVERTER_PREFIX, EDITOR_PREFIX, *REFERENCE_OTHER_PARTS))]
        if others:
            raise PipelineError(MODEL_INVALID, f"{source}: does not match the model: unexpected keys: "
                                               f"{', '.join(others[:5])}{' …' if len(others) > 5 else ''}")
        load_state(self.inverter, _strip(state, INVERTER_PREFIX), f"{source} ({INVERTER_PREFIX}*)")
        load_state(self.feature_editor, _strip(state, EDITOR_PREFIX), f"{source} ({EDITOR_PREFIX}*)")

    def invert(self, x: torch.Tensor, generator: Generator, feature: FeatureRender | None = None,
               fuse: Merge | None = None) -> FeatureInversion:
        """``x`` from ``inverter_input`` → W+ and the fused feature. The generator renders its own feature
        for the predicted W+ (up to the feature's resolution only) and the fuser merges the two. ``feature``:
        how that partial render runs, ``Generator.feature``'s signature (default: the generator's own; the
        Editor passes its render layer's ``Renderer.feature``, the fast renderer of the device); ``fuse``: how
        the fuser runs (default: the module; the Editor passes ``render/fuser.py``'s)."""
        codes, predicted = self.inverter.fs_backbone(x)
        wplus = codes + generator.latent_avg  # the generator checkpoint's mean W, as the reference adds
        own, _ = (feature or generator.feature)(generator.styles(wplus), predicted.shape[-1])
        return FeatureInversion(wplus, (fuse or self.inverter.fuser.merge)(predicted, own))

    def edit_feature(self, fused: torch.Tensor, delta: torch.Tensor | None = None,
                     edit: Merge | None = None) -> torch.Tensor:
        """The feature to render: the Feature Editor's answer to ``delta`` (``feature_delta``; None, the
        inversion itself, is the edit with Δ = 0, as the reference runs it). ``edit``: how the Feature Editor
        runs (default: the module)."""
        return (edit or self.feature_editor.merge)(fused, torch.zeros_like(fused) if delta is None else delta)


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# --- checkpoints -------------------------------------------------------------------------------------------

def infer_config(state: dict[str, torch.Tensor], source: str) -> SFEConfig:
    """Widths and depths from an official ``state_dict``'s own keys and shapes."""
    def shape(key: str) -> torch.Size:
        if key not in state:
            raise PipelineError(MODEL_INVALID, f"{source}: not an SFE editor checkpoint (missing key {key})")
        return state[key].shape

    def count(pattern: str) -> int:
        return len({m.group(1) for k in state if (m := re.fullmatch(pattern, k))})

    backbone = f"{INVERTER_PREFIX}fs_backbone."
    stages = tuple((shape(f"{backbone}block_{i}.0.conv1.weight")[0],
                    count(rf"{re.escape(backbone)}block_{i}\.(\d+)\.conv1\.weight")) for i in range(1, 5))
    return SFEConfig(
        stem=shape(f"{backbone}conv.0.weight")[0], stages=stages,
        n_styles=count(rf"{re.escape(backbone)}styles\.(\d+)\.weight"),
        style_dim=shape(f"{backbone}styles.0.weight")[0],
        feature_channels=shape(f"{backbone}content_layer.4.weight")[0],
        fuser_blocks=count(rf"{re.escape(INVERTER_PREFIX)}fuser\.body\.(\d+)\.body\.1\.weight"),
        editor_blocks=count(rf"{re.escape(EDITOR_PREFIX)}body\.(\d+)\.body\.1\.weight"))


def load_sfe(path: str | Path, device: str | torch.device = "cpu") -> SFE:
    """Read the official ``sfe_editor_light.pt`` (a dict whose ``state_dict`` holds ``inverter.*`` and
    ``encoder.*``; other top-level entries are ignored, as the reference ignores them) or a ``save_sfe`` file.
    A mismatch is ``model_invalid`` naming the file and the first mismatched keys."""
    ckpt = read_checkpoint(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise PipelineError(MODEL_INVALID, f"{path}: no 'state_dict' (keys: {sorted(ckpt)[:8]})")
    sfe = SFE(infer_config(state, str(path)))
    sfe.load_checkpoint_state(state, str(path))
    return sfe.to(device).eval()


def save_sfe(path: str | Path, sfe: SFE) -> None:
    """Write the official layout (``{"state_dict": {inverter.*, encoder.*}}``), readable by the reference."""
    state = {k: v.detach().cpu().contiguous() for k, v in sfe.checkpoint_state().items()}
    torch.save({"state_dict": state}, Path(path))


# --- inversion and edit, with the generator ----------------------------------------------------------------

def inverter_input(images: torch.Tensor) -> torch.Tensor:
    """Aligned crops ``[B,3,H,W]`` in [-1, 1] → the ``[B,3,256,256]`` the Inverter (and SFE's e4e) sees: a
    bilinear resize without antialiasing, as the reference's ``F.interpolate`` (not e4e's PIL resize)."""
    if images.shape[-2:] == (INPUT_SIZE, INPUT_SIZE):
        return images
    return F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class FeatureInversion:
    """What SFE keeps of a face: its W+ (``latent_avg`` included) ``[B,n_latent,style_dim]`` and the fused
    feature ``[B,C,r,r]`` that the Feature Editor adapts to every edit."""

    wplus: torch.Tensor
    fused: torch.Tensor


def feature_delta(generator: Generator, styles: list[torch.Tensor], edited: list[torch.Tensor],
                  resolution: int) -> torch.Tensor:
    """How an edit moves the generator's own feature at ``resolution``: ``G_r(styles) − G_r(edited)``. SFE
    measures it on e4e's W+ (codes the generator renders well), not on its own."""
    before, _ = generator.feature(styles, resolution)
    after, _ = generator.feature(edited, resolution)
    return before - after
