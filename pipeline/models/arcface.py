"""ArcFace IR-SE-50 (TreB1eN's ``Backbone``, the face recognizer of e4e's identity loss): faces → unit
embeddings whose cosine says how alike two faces are. Training uses it for the identity loss
(``pipeline/train/losses.py``), serving for the likeness of an edited face to the original
(``Editor.render``), the doctor for the inversion's identity.

Embedding follows e4e's ``IDLoss``: crop the 256² aligned face's centre, pool to 112², embed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import MODEL_INVALID, PipelineError
from pipeline.models.checkpoints import load_state, read_checkpoint
from pipeline.models.e4e import BottleneckIR, backbone_units

ID_CROP = (35, 223, 32, 220)  # e4e's face centre in a 256² aligned crop: rows, then columns


class ArcFace(nn.Module):
    """The IR-SE-50 face recognizer of e4e's identity loss (TreB1eN's ``Backbone``, 112² input, 512-d output).

    Key names equal ``model_ir_se50.pt``; ``width`` < 64 only for tiny test models."""

    def __init__(self, width: int = 64, affine: bool = True):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                         nn.PReLU(width))
        self.body = nn.Sequential(*[BottleneckIR(u, se=True) for u in backbone_units(50, width)])
        dim = 8 * width
        self.output_layer = nn.Sequential(nn.BatchNorm2d(dim), nn.Dropout(0.6), nn.Flatten(),
                                          nn.Linear(dim * 7 * 7, 512), nn.BatchNorm1d(512, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aligned faces ``[B, 3, 112, 112]`` in [-1, 1] → unit embeddings ``[B, 512]``."""
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """e4e's ``extract_feats``: 256² aligned crops (other sizes are pooled to 256 first) → embeddings."""
        if images.shape[-1] != 256:
            images = F.adaptive_avg_pool2d(images, 256)
        top, bottom, left, right = ID_CROP
        return self(F.adaptive_avg_pool2d(images[:, :, top:bottom, left:right], 112))


def load_arcface(path: Path, device: torch.device | str = "cpu") -> ArcFace:
    """Read ``model_ir_se50.pt`` (a plain state dict); frozen, in eval mode."""
    state = read_checkpoint(path)
    if "input_layer.0.weight" not in state or "output_layer.4.running_mean" not in state:
        raise PipelineError(MODEL_INVALID, f"{path}: not an ArcFace IR-SE-50 state dict (model_ir_se50.pt)")
    model = ArcFace(width=state["input_layer.0.weight"].shape[0], affine="output_layer.4.weight" in state)
    load_state(model, state, str(path))
    return model.to(device).eval().requires_grad_(False)


def identity_similarity(arcface: ArcFace, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine similarity ``[B]`` of the two faces' embeddings (the target side carries no grad)."""
    with torch.no_grad():
        target = arcface.embed(y.float())
    return (arcface.embed(y_hat.float()) * target).sum(1)
