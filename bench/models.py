"""The models at full size with random weights, and the per-model benchmarks (align, e4e, CLIP text, synthesis).

Timing does not depend on weight values, so the official architectures are built in memory (never written to
disk) and filled with the golden fill rule (``pipeline.golden.fill_state_dict``), which keeps activations in
a realistic range: no denormals or infinities that would time differently from real weights. Building is not
timed.

Full size: StyleGAN2 FFHQ 1024 config-f (``channel_multiplier=2``, 18 W+ rows, 6048 conv style channels),
e4e IR-SE-50 at 256² input (width 64), CLIP ViT-B/32, a relevance matrix ``[6048, 512]``. ``--quick`` swaps in
the development bundle's tiny sizes so the whole suite runs in seconds (a smoke test, not a measurement).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.timing import Timing, measure, measure_interleaved
from pipeline.render.config import RenderConfig
from pipeline.render.renderer import Renderer

NEUTRAL, TARGET = "a face", "a face with a beard"


@dataclass(frozen=True)
class Sizes:
    """Architecture of one benchmark configuration."""

    name: str
    generator_size: int
    style_dim: int
    encoder_width: int
    generator_channels: dict[int, int] | None = None  # None: config-f widths (channel_multiplier 2)
    clip: dict = field(default_factory=dict)           # clip.model.CLIP keyword arguments


VIT_B_32 = {"embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
            "vision_patch_size": 32, "context_length": 77, "vocab_size": 49408, "transformer_width": 512,
            "transformer_heads": 8, "transformer_layers": 12}
FULL = Sizes("full", generator_size=1024, style_dim=512, encoder_width=64, clip=VIT_B_32)
# 128²: the smallest generator StyleFeatureEditor's 64² feature fits into (the sfe group)
QUICK = Sizes("quick", generator_size=128, style_dim=128, encoder_width=16,
              generator_channels={4: 64, 8: 64, 16: 64, 32: 32, 64: 32, 128: 16},
              clip={**VIT_B_32, "embed_dim": 64, "image_resolution": 32, "vision_layers": 2, "vision_width": 64,
                    "vision_patch_size": 8, "transformer_width": 64, "transformer_heads": 1,
                    "transformer_layers": 2})


@dataclass
class Models:
    """Everything an edit needs, on one device, in eval mode without gradients."""

    generator: torch.nn.Module
    encoder: torch.nn.Module
    clip: torch.nn.Module
    fs3: torch.Tensor        # [conv style channels, embed_dim]
    style_std: torch.Tensor  # [all style channels]
    device: torch.device
    renderer: Renderer       # how the service renders the generator (``pipeline/render/renderer.py``)
    dtype: torch.dtype = torch.float32  # of the generator (float16/bfloat16 on CUDA where tolerances hold)


def fill(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter and buffer with the golden fill rule (strict: every key filled)."""
    from pipeline.golden import fill_state_dict

    constructed = module.state_dict()
    layout = {k: list(v.shape) for k, v in constructed.items()}
    module.load_state_dict(fill_state_dict(layout, seed, constructed), strict=True)
    return module.eval().requires_grad_(False)


def build_models(sizes: Sizes, device: torch.device, seed: int = 0, render: RenderConfig | None = None) -> Models:
    """The generator, e4e and CLIP of ``sizes`` with random weights, plus a random relevance matrix whose style
    statistics are the generator's own (as ``pipeline.edit.relevance`` computes them), and the generator's
    ``Renderer`` with ``render`` (default: the service's defaults)."""
    from clip.model import CLIP

    from pipeline.models.e4e import E4E, Encoder4Editing
    from pipeline.models.stylegan2 import Generator

    with torch.no_grad():
        g = fill(Generator(sizes.generator_size, style_dim=sizes.style_dim,
                           channels=sizes.generator_channels), seed)
        rng = torch.Generator().manual_seed(seed)
        g.latent_avg = g.mapping(torch.randn(4096, sizes.style_dim, generator=rng)).mean(0)
        encoder = fill(Encoder4Editing(50, "ir_se", stylegan_size=sizes.generator_size, width=sizes.encoder_width),
                       seed + 1)
        e4e = E4E(encoder, g.latent_avg, channels_last=True).eval()  # the layout load_encoder serves
        clip_model = fill(CLIP(**sizes.clip).float(), seed + 2)
        styles = torch.cat(g.styles(g.mapping(torch.randn(512, sizes.style_dim, generator=rng))), dim=1)
        n_conv = sum(d for d, rgb in zip(g.style_dims, g.style_is_torgb, strict=True) if not rgb)
        fs3 = torch.randn(n_conv, sizes.clip["embed_dim"], generator=rng)
        fs3 /= fs3.norm(dim=1, keepdim=True)
    g = g.to(device)
    return Models(g, e4e.to(device), clip_model.to(device), fs3.to(device), styles.std(0, unbiased=False).to(device),
                  device, Renderer(g, render))


# --- the benchmarks ----------------------------------------------------------------------------------------

@dataclass
class Inverted:
    """What the editor keeps from an inversion: the photo bytes, its face quad, and the W+ codes."""

    photo: bytes
    quad: np.ndarray
    codes: torch.Tensor  # [1, n_latent, style_dim]


def bench_align(photo: bytes, repeats: int, budget_s: float) -> tuple[Timing, object]:
    """The editor's ``align`` stage: decode the photo, detect the face, FFHQ-align it to 256²."""
    from pipeline.faces.align import align_face
    from pipeline.faces.detect import find_faces
    from pipeline.faces.photo import load_photo

    result = {}

    def run():
        image = load_photo(photo)
        result["alignment"] = align_face(image, find_faces(image), output_size=256)

    return measure(run, repeats, budget_s), result["alignment"]


def bench_invert(models: Models, crop: Image.Image, repeats: int, budget_s: float) -> tuple[Timing, torch.Tensor]:
    """The editor's ``invert`` stage: e4e on one aligned 256² crop, in the channels-last layout the editor's
    encoder runs in (``bench.ports`` times it against the module's plain layout)."""
    x = torch.from_numpy(np.asarray(crop.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    x = (x / 127.5 - 1).to(models.device)
    out = {}

    def run():
        with torch.no_grad():
            out["codes"] = models.encoder(x).float()

    return measure(run, repeats, budget_s, models.device), out["codes"]


def bench_text(models: Models, repeats: int, budget_s: float) -> dict[str, Timing]:
    """A text direction computed cold (158 prompts through CLIP) and served from the cache (a dictionary hit)."""
    from pipeline.edit.directions import TextDirectionCache

    def cold():
        TextDirectionCache(None, model_id="bench").get(models.clip, NEUTRAL, TARGET)

    cache = TextDirectionCache(None, model_id="bench")
    cache.get(models.clip, NEUTRAL, TARGET)
    return {"text_direction_cold_s": measure(cold, repeats, budget_s, models.device),
            "text_direction_cached_s": measure(lambda: cache.get(models.clip, NEUTRAL, TARGET), max(repeats, 20),
                                               budget_s)}


def bench_synthesis(models: Models, codes: torch.Tensor, repeats: int, budget_s: float) -> dict[str, Timing]:
    """One image from its style vectors at batch 1 as the service renders it (``models.renderer``) and by the
    reference (``Generator.synthesize`` with ``impl="ref"``), measured in alternation (``measure_interleaved``):
    ``{"fast": …, "ref": …}``."""
    g = models.generator
    with torch.no_grad():
        styles = [s.to(models.dtype) for s in g.styles(codes.to(models.dtype))]

    def fast():
        with torch.no_grad():
            models.renderer.render(styles)

    def ref():
        with torch.no_grad():
            g.synthesize(styles, impl="ref")

    return measure_interleaved({"fast": fast, "ref": ref}, repeats, budget_s, models.device)


def face_photo(path: Path | None, size: int) -> tuple[bytes, bool]:
    """The photo's bytes, and whether it is a real face (else a gray ``size``² stand-in: align is skipped,
    paste-back goes through a centred quad)."""
    if path is not None and path.is_file():
        return path.read_bytes(), True
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue(), False


def centred_quad(size: int) -> np.ndarray:
    """An upright FFHQ-style quad covering the middle half of a ``size``² photo (TL, BL, BR, TR)."""
    a, b = size * 0.25, size * 0.75
    return np.array([[a, a], [a, b], [b, b], [b, a]], dtype=np.float64)
