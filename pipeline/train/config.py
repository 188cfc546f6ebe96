"""The options of an e4e fine-tuning run, without torch: the CLI builds its ``--help`` from these, and
``python -m pipeline --help`` must not pay for importing torch (``pipeline/train/finetune.py`` is the loop itself)."""

from __future__ import annotations

from dataclasses import dataclass

GROUPS = ("input_layer", "body", "latlayers", "styles")
# --freeze presets: the groups kept frozen
FREEZE_PRESETS = {"all-but-styles": ("input_layer", "body", "latlayers"), "backbone": ("input_layer", "body"),
                  "none": ()}


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of one run (``python -m pipeline finetune --help`` explains each). Loss weights are e4e's
    FFHQ settings; e4e's latent discriminator is not part of this fine-tuning."""

    data: str
    bundle: str
    out: str
    freeze: str = "all-but-styles"
    iters: int = 1000
    batch: int = 4
    accum: int = 1
    lr: float = 1e-4
    val_split: float = 0.05
    val_every: int = 100
    val_max: int = 256
    save_every: int = 100
    keep: int = 3
    size: int = 256
    l2_lambda: float = 1.0
    lpips_lambda: float = 0.8
    id_lambda: float = 0.1
    delta_lambda: float = 2e-4
    lpips: str = "auto"
    align: str = "auto"
    clip_grad: float = 0.0
    seed: int = 0
    amp: bool = True
    workers: int = 2
    device: str | None = None
    progress: bool = True
