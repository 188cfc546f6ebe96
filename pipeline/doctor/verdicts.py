"""What ``doctor`` calls a pass: the thresholds, where each comes from, and the pure decisions over measured scores.

Nothing here touches a model or imports torch: every decision is a function of numbers the checks measured, so the
logic is unit-tested with stubbed scores and the thresholds sit in one place with their sources.

None of these thresholds could be measured on the real weights here (they cannot be downloaded on the machines
that built this project); each comes from a paper or a public report, with a margin for judging one photo or one
sample instead of a test-set mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    """One line of the report: a stable ``name``, the outcome, a one-line human ``reason`` and the numbers."""

    name: str
    status: Status
    reason: str
    values: dict = field(default_factory=dict)
    seconds: float = 0.0

    def timed(self, seconds: float) -> Check:
        return replace(self, seconds=round(seconds, 3))

    def to_dict(self) -> dict:
        return {"name": self.name, "status": str(self.status), "reason": self.reason, "values": self.values,
                "seconds": self.seconds}


def passed(name: str, reason: str, **values) -> Check:
    return Check(name, Status.PASS, reason, values)


def failed(name: str, reason: str, **values) -> Check:
    return Check(name, Status.FAIL, reason, values)


def skipped(name: str, reason: str, **values) -> Check:
    return Check(name, Status.SKIP, reason, values)


# --- files ------------------------------------------------------------------------------------------------------

# --- the render -------------------------------------------------------------------------------------------------

# StyleGAN2 is trained on images scaled to [-1, 1] (NVIDIA's dataset_tool / rosinality's `Normalize(0.5, 0.5)`),
# and its samples stay close to that range: a little overshoot on highlights, hence 1.5, and a 1 % allowance.
# Values far outside mean weights that are not a trained generator (or a broken loader). A flat image (tiny std)
# means dead layers. These are sanity bounds on the training range, not a paper's number.
RENDER_RANGE = 1.5
RENDER_INSIDE_MIN = 0.99
RENDER_STD_MIN = 0.05


def judge_render(shape: Sequence[int], size: int, finite: bool, inside_fraction: float, std: float,
                 dev: bool) -> Check:
    """A face from a random latent: the right shape, finite, and (real weights only) in the trained range."""
    name = "render"
    values = {"shape": list(shape), "inside_fraction": round(inside_fraction, 4), "std": round(std, 4)}
    if tuple(shape) != (1, 3, size, size):
        return failed(name, f"the generator rendered {list(shape)}, expected [1, 3, {size}, {size}]", **values)
    if not finite:
        return failed(name, "the render has NaN or infinite values: the generator's weights are corrupt", **values)
    if std <= 0:
        return failed(name, "the render is one flat colour: the generator's weights are dead", **values)
    if dev:
        return passed(name, f"{size}x{size}, finite (the value range is not judged: random weights)", **values)
    if inside_fraction < RENDER_INSIDE_MIN:
        return failed(name, f"only {inside_fraction:.1%} of the values lie within ±{RENDER_RANGE} (a trained "
                            f"StyleGAN2 renders in [-1, 1]): not a trained generator, or loaded wrongly", **values)
    if std < RENDER_STD_MIN:
        return failed(name, f"the render is almost flat (std {std:.3f} < {RENDER_STD_MIN}): not a trained "
                            f"generator", **values)
    return passed(name, f"{size}x{size}, finite, {inside_fraction:.1%} of values within ±{RENDER_RANGE}, "
                        f"std {std:.2f}", **values)


# --- CLIP sees a face -------------------------------------------------------------------------------------------

# Zero-shot classification of the rendered face among these prompts, at the model's own logit scale (100 for the
# released CLIP: `logit_scale` is clipped there, Radford et al. 2021, sec. 2.5). The openai/CLIP README's own
# example scores its diagram 0.9928 against "a dog" / "a cat" with ViT-B/32: for coarse, unrelated classes
# CLIP's probabilities are near 1. "A face" against cars, houses, food and text is that easy. We ask for 0.80 of
# the probability over 7 prompts (chance: 0.14): a wide margin below what a real model gives, far above what a
# broken image path (wrong normalization, channel order, random vision tower) gives.
FACE_PROMPT = "a photo of a face"
NON_FACE_PROMPTS = ("a photo of a car", "a photo of a house", "a photo of a landscape", "a photo of a bowl of food",
                    "a photo of a chair", "a page of text")
FACE_PROBABILITY_MIN = 0.80


def softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def judge_clip_face(similarities: Mapping[str, float], logit_scale: float) -> Check:
    """``similarities``: cosine of the rendered face's CLIP image embedding with each prompt's text embedding."""
    name = "clip-face"
    prompts = list(similarities)
    if FACE_PROMPT not in similarities or len(prompts) < 2:
        raise ValueError(f"similarities must hold {FACE_PROMPT!r} and at least one other prompt")
    probs = dict(zip(prompts, softmax([logit_scale * similarities[p] for p in prompts]), strict=True))
    best_other = max((p for p in prompts if p != FACE_PROMPT), key=lambda p: similarities[p])
    values = {"face_probability": round(probs[FACE_PROMPT], 4), "logit_scale": round(logit_scale, 2),
              "cosine": {p: round(s, 4) for p, s in similarities.items()}}
    if probs[FACE_PROMPT] >= FACE_PROBABILITY_MIN and similarities[FACE_PROMPT] > similarities[best_other]:
        return passed(name, f"CLIP gives {FACE_PROMPT!r} p={probs[FACE_PROMPT]:.3f} among {len(prompts)} prompts "
                            f"(>= {FACE_PROBABILITY_MIN}); next: {best_other!r}", **values)
    return failed(name, f"CLIP gives {FACE_PROMPT!r} only p={probs[FACE_PROMPT]:.3f} (needs >= "
                        f"{FACE_PROBABILITY_MIN}); it prefers {best_other!r}: the CLIP weights or the generator "
                        f"are not the real ones, or images reach CLIP wrongly", **values)


# --- inversion reconstructs the sample photo ------------------------------------------------------------------

# Metric: mean squared error over the 256x256 aligned crop, both images in [-1, 1], the generator's output clamped
# and average-pooled to 256 as e4e does (`face_pool`): the L2 of pSp/e4e evaluations.
# Source: GAN Inverter's benchmark (caopulan/GANInverter README, "Benchmark"; CelebA-HQ test split, 2,824 images,
# scripts/test.py computes exactly this MSE) reports e4e at MSE 0.0472, LPIPS 0.1974, ID 0.50; pSp 0.0345 / 0.1591
# / 0.56, matching the pSp paper's own CelebA-HQ numbers, which vouches for the setup. (The e4e paper's table
# itself was not retrievable from the stored copies we could search; only its abstract.)
# Margin: we judge one photo, not a mean. The benchmark's mean PSNR (16.66 dB, 10·log10(2/MSE) per image) puts
# the per-image geometric-mean MSE at 0.043 against the arithmetic 0.047; a log-normal with those two moments has
# σ ≈ 0.42, so 0.10 sits near its 98th percentile, and the sample (a frontal studio portrait on a plain
# background) is an easy photo. A wiring fault costs more: this photo against its own channel-swapped copy is
# already 0.082 before any reconstruction error, against [0, 1]-scaled input 0.28, against a flat grey 0.30
# (measured here on the aligned sample crop).
RECON_MSE_MAX = 0.10
# The generator's average face (its mean W, what an encoder that ignores its input returns) must do worse than
# the inversion: a real encoder reconstructs this photo better than the average of all faces. No margin needed.
# Identity (optional, with the bundle's `identity` model, ArcFace IR-SE-50 as in e4e's ID loss): e4e averages
# 0.50 cosine on CelebA-HQ (same benchmark); 0.30 leaves 0.2 for one photo and for our recognizer differing from
# the benchmark's; a different person scores near 0.
RECON_IDENTITY_MIN = 0.30
# LPIPS (optional, only with the official LPIPS weights in the bundle's lpips/ folder; AlexNet, as scripts/test.py
# uses): e4e averages 0.197; 0.35 is 1.75x that, for the same single-photo reason.
RECON_LPIPS_MAX = 0.35


def judge_reconstruction(mse: float, average_face_mse: float, identity: float | None = None,
                         lpips: float | None = None) -> Check:
    """Inverting the sample photo and rendering the codes gives it back (metrics above, all on the 256² crop)."""
    name = "reconstruction"
    values = {"mse": round(mse, 5), "average_face_mse": round(average_face_mse, 5)}
    problems = []
    if not math.isfinite(mse) or mse > RECON_MSE_MAX:
        problems.append(f"MSE {mse:.4f} > {RECON_MSE_MAX} (e4e averages 0.047 on CelebA-HQ)")
    if not mse < average_face_mse:
        problems.append(f"the generator's average face is as close to the photo (MSE {average_face_mse:.4f}) as "
                        f"the inversion: the encoder ignores its input")
    if identity is not None:
        values["identity"] = round(identity, 4)
        if not identity >= RECON_IDENTITY_MIN:
            problems.append(f"identity cosine {identity:.3f} < {RECON_IDENTITY_MIN} (e4e averages 0.50)")
    if lpips is not None:
        values["lpips"] = round(lpips, 4)
        if not lpips <= RECON_LPIPS_MAX:
            problems.append(f"LPIPS {lpips:.3f} > {RECON_LPIPS_MAX} (e4e averages 0.20)")
    extra = "".join(f", {k} {values[k]:.3f}" for k in ("identity", "lpips") if k in values)
    if problems:
        return failed(name, "the sample photo does not come back: " + "; ".join(problems)
                      + ": the encoder or generator is not the real one, or they do not belong together", **values)
    return passed(name, f"MSE {mse:.4f} <= {RECON_MSE_MAX} (average face: {average_face_mse:.4f}){extra}", **values)


# --- SFE gives the photo back more closely than e4e ---------------------------------------------------------------

# StyleFeatureEditor's own Table 1 (CVPR 2024, CelebA-HQ): L2 0.002 and LPIPS 0.019 against e4e's 0.047 and 0.199
# (the GAN Inverter benchmark's e4e figures): an order of magnitude. On one photo we only ask for the direction,
# strictly closer on the same crop and metric; a swapped file, a feature injected at the wrong place or a broken
# fuser gives a worse image than e4e's codes alone.

def judge_sfe_reconstruction(sfe_mse: float, e4e_mse: float) -> Check:
    """SFE's and e4e's reconstruction MSE of the sample photo (256² crop, [-1, 1], clamped renders)."""
    name = "reconstruction-sfe"
    values = {"sfe_mse": round(sfe_mse, 5), "e4e_mse": round(e4e_mse, 5)}
    if not (math.isfinite(sfe_mse) and sfe_mse < e4e_mse):
        return failed(name, f"SFE's reconstruction (MSE {sfe_mse:.4f}) is not closer to the photo than e4e's "
                            f"({e4e_mse:.4f}): SFE is not the real one or not wired to this generator", **values)
    return passed(name, f"MSE {sfe_mse:.4f} against e4e's {e4e_mse:.4f} ({e4e_mse / max(sfe_mse, 1e-12):.1f}x "
                        f"closer)", **values)


# --- a smile edit makes the face smile more -------------------------------------------------------------------

# StyleCLIP's README lists Smile as neutral "face" → target "smiling face"; positive manipulation strength moves
# toward the target, and its examples use alphas up to about 5 at beta 0.1-0.2 (ours: StyleCLIP's default 0.15).
# Score: CLIP's "smiling" margin of the face crop, cos(image, "a photo of a smiling face") − cos(image, "a photo of
# a face"), single prompts, not the 79-template ensemble that built the direction. It must rise at every step of
# alphas 0, 2, 4, and by at least 0.005 overall: 0.5 logit at CLIP's scale of 100, odds ×1.65 for "smiling"; a
# global direction is built to move the image's CLIP embedding along exactly this text difference, so a real,
# rightly wired bundle clears it widely (the margin only keeps rounding noise from passing).
SMILE_NEUTRAL, SMILE_TARGET = "a face", "a smiling face"
SMILE_ALPHAS = (0.0, 2.0, 4.0)
SMILE_BETA = 0.15
SMILE_SCORE_PROMPTS = ("a photo of a smiling face", "a photo of a face")
SMILE_RISE_MIN = 0.005


def judge_smile(alphas: Sequence[float], scores: Sequence[float]) -> Check:
    """``scores[i]``: the smiling margin of the photo edited with ``alphas[i]`` (alphas ascending)."""
    name = "smile-edit"
    if len(alphas) != len(scores) or len(alphas) < 2 or list(alphas) != sorted(alphas):
        raise ValueError("need one score per alpha, at least two, alphas ascending")
    values = {"alphas": list(alphas), "smile_scores": [round(s, 5) for s in scores]}
    shown = ", ".join(f"{a:g}: {s:+.4f}" for a, s in zip(alphas, scores, strict=True))
    steps = [b - a for a, b in zip(scores[:-1], scores[1:], strict=True)]
    if not all(math.isfinite(s) for s in scores) or not all(d > 0 for d in steps):
        return failed(name, f"CLIP's smiling score does not rise with alpha ({shown}): the edit directions "
                            f"(relevance file, CLIP) do not match the generator", **values)
    if scores[-1] - scores[0] < SMILE_RISE_MIN:
        return failed(name, f"CLIP's smiling score rises only {scores[-1] - scores[0]:.4f} from alpha "
                            f"{alphas[0]:g} to {alphas[-1]:g} (needs >= {SMILE_RISE_MIN}; {shown})", **values)
    return passed(name, f"CLIP's smiling score rises with alpha ({shown})", **values)
