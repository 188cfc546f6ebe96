"""StyleCLIP latent optimization (``mode="optimize"``): move the W+ code until CLIP sees the target text.

Reference: StyleCLIP ``optimization/run_optimization.py``. Minimize over W+ (starting at the inversion)

    loss = (1 − cos(CLIP_image(G(w)), CLIP_text(target))) + l2_lambda · ‖w − w_start‖²
           [+ id_lambda · (1 − cos(ArcFace(G(w)), ArcFace(G(w_start))))   when the bundle has an identity model]

with Adam and StyleCLIP's learning-rate schedule (linear ramp-up over the first 5 %, cosine ramp-down over the
last 25 %). Unlike the global directions this costs ``steps`` generator+CLIP forward and backward passes, but it
follows the prompt more literally.

**What alpha means here**: one optimization per edit, then each output is ``w_start + alpha·(w* − w_start)``.
``alpha = 1`` is the optimized result, ``0`` the unedited reconstruction, ``0.5`` half-way, negative values move
away from the text, values above 1 extrapolate. This keeps alpha a "strength" as in the global mode and makes a
list of alphas cost one optimization, not one each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pipeline.errors import INVALID_PARAMETER, Canceled, PipelineError

MAX_STEPS = 1000


@dataclass(frozen=True)
class OptimizeConfig:
    """StyleCLIP's defaults (its optimization notebook), except ``steps`` (300 there; 100 is a usable CPU
    budget). ``id_lambda`` applies only when an identity model is given."""

    steps: int = 100
    lr: float = 0.1
    l2_lambda: float = 0.008
    id_lambda: float = 0.005
    rampup: float = 0.05
    rampdown: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise PipelineError(INVALID_PARAMETER, f"steps must be an integer in [1, {MAX_STEPS}], got {self.steps!r}")
        for name, value, top in (("lr", self.lr, 1.0), ("l2_lambda", self.l2_lambda, 10.0),
                                 ("id_lambda", self.id_lambda, 10.0)):
            if not math.isfinite(value) or not 0 <= value <= top or (name == "lr" and value == 0):
                raise PipelineError(INVALID_PARAMETER, f"{name} must be in (0, {top:g}], got {value!r}")
        if not (0 < self.rampup < 1 and 0 < self.rampdown < 1):
            raise PipelineError(INVALID_PARAMETER, "rampup and rampdown must be fractions in (0, 1)")


@dataclass(frozen=True)
class OptimizeResult:
    """start and optimized W+ ``[n_latent, dim]``; per-step total, CLIP and identity losses (the last empty
    without an identity model)."""

    start: torch.Tensor
    optimized: torch.Tensor
    losses: tuple[float, ...]
    clip_losses: tuple[float, ...]
    id_losses: tuple[float, ...] = ()

    def interpolate(self, alphas: Sequence[float]) -> torch.Tensor:
        """``[len(alphas), n_latent, dim]``: ``start + alpha·(optimized − start)`` (see the module docstring)."""
        a = torch.as_tensor(list(alphas), dtype=self.start.dtype, device=self.start.device).view(-1, 1, 1)
        return self.start[None] + a * (self.optimized - self.start)[None]


def learning_rate(t: float, base: float, rampup: float, rampdown: float) -> float:
    """StyleCLIP's schedule at progress ``t`` in [0, 1): ramp up linearly, then down along a half cosine."""
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return base * ramp * min(1.0, t / rampup)


def clip_loss(clip_model: torch.nn.Module, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``1 − cos`` between CLIP embeddings of ``images [B,3,H,W]`` in [-1, 1] and a unit text embedding
    ``[D]``: ``[B]``, differentiable with respect to the images."""
    from pipeline.models.clip_model import clip_preprocess, image_features

    features = image_features(clip_model, clip_preprocess(images, clip_model.visual.input_resolution))
    features = features / features.norm(dim=-1, keepdim=True)
    return 1 - features @ text


def text_embedding(clip_model: torch.nn.Module, text: str) -> torch.Tensor:
    """The unit CLIP embedding ``[D]`` of the raw text (StyleCLIP's optimization uses no prompt templates)."""
    from pipeline.models.clip_model import text_features

    features = text_features(clip_model, [text])[0]
    return features / features.norm()


def optimize_latent(generator: torch.nn.Module, clip_model: torch.nn.Module, start: torch.Tensor, target: str,
                    config: OptimizeConfig = OptimizeConfig(),
                    progress: Callable[[str, float], None] | None = None,
                    should_cancel: Callable[[], bool] | None = None,
                    identity: torch.nn.Module | None = None) -> OptimizeResult:
    """Optimize the W+ code ``start [n_latent, dim]`` towards ``target``; reports stage ``optimize`` and polls
    ``should_cancel`` every step (raising ``Canceled``). ``identity`` (an ArcFace with ``embed(images)``, see
    ``pipeline.train.losses``) adds e4e's identity loss against the starting face. Model weights are not touched."""
    if not isinstance(target, str) or not target.strip():
        raise PipelineError(INVALID_PARAMETER, "target text must be a non-empty string")
    start = start.detach().float()
    text = text_embedding(clip_model, target).to(start.device)
    latent = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=config.lr)
    losses, clip_losses, id_losses = [], [], []
    use_identity = identity is not None and config.id_lambda > 0
    if use_identity:
        with torch.no_grad():
            start_identity = identity.embed(generator(start[None]))
    with torch.enable_grad():
        for i in range(config.steps):
            if should_cancel is not None and should_cancel():
                raise Canceled()
            optimizer.param_groups[0]["lr"] = learning_rate(i / config.steps, config.lr, config.rampup,
                                                            config.rampdown)
            image = generator(latent[None])
            c_loss = clip_loss(clip_model, image, text)[0]
            loss = c_loss + config.l2_lambda * (latent - start).pow(2).sum()
            if use_identity:
                i_loss = 1 - (identity.embed(image) * start_identity).sum()
                loss = loss + config.id_lambda * i_loss
                id_losses.append(i_loss.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            clip_losses.append(c_loss.item())
            if progress is not None:
                progress("optimize", (i + 1) / config.steps)
    return OptimizeResult(start, latent.detach(), tuple(losses), tuple(clip_losses), tuple(id_losses))
