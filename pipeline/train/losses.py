"""The e4e training losses: pixel L2, LPIPS, identity (ArcFace IR-SE-50) and the W-delta regularization.

LPIPS (Zhang et al. 2018) is AlexNet features (e4e trains with ``net='alex'``) compared after unit-normalizing
each channel, weighted per channel by learned 1×1 layers, averaged over space and summed over five layers. Its
numbers mean something only with two files: the torchvision ImageNet AlexNet (``alexnet-owt-7be5be79.pth``)
and the ``lpips`` package's linear weights (``weights/v0.1/alex.pth``). Without them ``load_lpips`` builds the
same architecture on seeded random features with unit weights ("untrained"): a structural distance that still
trains, reported under another name so nobody mistakes it for LPIPS. Nothing is downloaded here.

Identity follows e4e's ``IDLoss``: 1 − the cosine similarity of ArcFace embeddings (``pipeline/models/arcface.py``,
which the service also uses to score likeness).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.arcface import identity_similarity
from pipeline.models.checkpoints import load_state, read_checkpoint

log = logging.getLogger(__name__)

ALEX_CHANNELS = (64, 192, 384, 256, 256)
ALEX_TAPS = (1, 4, 7, 9, 11)  # indices of the ReLUs after conv1..conv5 in torchvision's ``alexnet().features``
LPIPS_DIR = "lpips"           # folder inside a bundle that may hold the two LPIPS files
LPIPS_BACKBONE = "alexnet-owt-7be5be79.pth"
LPIPS_LINEAR = "alex.pth"


def l2_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel error (e4e's ``l2_lambda`` term), images in [-1, 1]."""
    return F.mse_loss(y_hat.float(), y.float())


def delta_loss(codes: torch.Tensor) -> torch.Tensor:
    """e4e's W-delta regularization: Σ_i mean_batch ‖w_i − w_0‖₂ over the W+ rows ``codes [B, n, dim]``.

    It keeps the per-layer codes close to one w, the property that makes e4e's inversions editable."""
    deltas = codes[:, 1:].float() - codes[:, :1].float()
    return deltas.norm(p=2, dim=2).mean(0).sum()


# --- LPIPS ------------------------------------------------------------------------------------------------------

class LPIPS(nn.Module):
    """LPIPS with the AlexNet trunk; ``trained`` says whether the official weights were loaded."""

    def __init__(self) -> None:
        super().__init__()
        # torchvision's ``alexnet().features`` up to the last ReLU (same indices, so its keys load as they are)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        # the lpips package's ScalingLayer: maps [-1, 1] inputs to ImageNet-normalized ones
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in ALEX_CHANNELS)
        for lin in self.lins:
            nn.init.constant_(lin.weight, 1.0 / lin.in_channels)
        self.trained = False

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in ALEX_TAPS:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample distance ``[B]`` between images ``[B, 3, H, W]`` in [-1, 1]."""
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for lin, fx, fy in zip(self.lins, self._taps(x.float()), self._taps(y.float()), strict=True):
            total = total + lin((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return total


def load_lpips(directory: Path | None, device: torch.device | str = "cpu", seed: int = 0) -> LPIPS:
    """Official LPIPS from ``directory`` (``alexnet-owt-7be5be79.pth`` + ``alex.pth``), else the untrained
    variant (seeded random AlexNet, unit weights) with a loud warning. Frozen, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LPIPS()
    backbone = directory / LPIPS_BACKBONE if directory else None
    linear = directory / LPIPS_LINEAR if directory else None
    if backbone is not None and backbone.is_file() and linear.is_file():
        trunk = read_checkpoint(backbone)
        features = {k[len("features."):]: v for k, v in trunk.items() if k.startswith("features.")}
        load_state(model.features, features, f"{backbone} (features.*, up to conv5)")
        lins = read_checkpoint(linear)
        # lpips' NetLinLayer is Sequential(Dropout, Conv2d): its weight is ``lin{k}.model.1.weight``
        load_state(model.lins, {f"{k}.weight": lins.get(f"lin{k}.model.1.weight") for k in range(5)
                                if f"lin{k}.model.1.weight" in lins}, str(linear))
        model.trained = True
    else:
        log.warning("LPIPS weights not found (%s and %s in the bundle's %s/ folder): using UNTRAINED random "
                    "AlexNet features; the 'lpips_untrained' numbers are a structural distance, not LPIPS",
                    LPIPS_BACKBONE, LPIPS_LINEAR, LPIPS_DIR)
    return model.to(device).eval().requires_grad_(False)


# --- the e4e objective -------------------------------------------------------------------------------------------

def loss_terms(config, codes: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor,
               lpips, arcface) -> dict[str, torch.Tensor]:
    """Each e4e loss term (unweighted) and ``loss``, their weighted sum; ``config`` gives the weights
    (``l2_lambda``, ``lpips_lambda``, ``id_lambda``, ``delta_lambda``, as ``FinetuneConfig``)."""
    terms = {"l2": l2_loss(y_hat, y), "delta": delta_loss(codes)}
    loss = config.l2_lambda * terms["l2"] + config.delta_lambda * terms["delta"]
    if lpips is not None and config.lpips_lambda > 0:
        key = "lpips" if lpips.trained else "lpips_untrained"
        terms[key] = lpips(y_hat, y).mean()
        loss = loss + config.lpips_lambda * terms[key]
    if arcface is not None and config.id_lambda > 0:
        terms["id"] = 1 - identity_similarity(arcface, y_hat, y).mean()
        loss = loss + config.id_lambda * terms["id"]
    terms["loss"] = loss
    return terms


def render(generator, codes: torch.Tensor, size: int) -> torch.Tensor:
    """W+ codes → images at the loss resolution (e4e pools its 1024² output to 256² the same way)."""
    y_hat = generator(codes)
    if y_hat.shape[-1] > size:
        return F.adaptive_avg_pool2d(y_hat, size)
    if y_hat.shape[-1] < size:
        return F.interpolate(y_hat, size=size, mode="bilinear", align_corners=False)
    return y_hat
