"""The development bundle: tiny random-weight models in the official file formats.

Every file goes through the same loader as its official counterpart (a rosinality ``g_ema`` checkpoint, an e4e
checkpoint with ``encoder.*`` keys and ``latent_avg``, a CLIP TorchScript archive, a relevance file written by
our precompute, SFE's ``state_dict`` with ``inverter.*`` and ``encoder.*``), so the whole pipeline runs end to end, in a second or two on a CPU, where the real weights
cannot be downloaded. The edits are noise: the manifest says ``"dev": true`` and every user warns.

Sizes: the generator keeps the official depth for its resolution (so ``n_latent`` and the style layout are the
real ones for that size) with narrow layers; e4e is the real IR-SE-50 at width 16; W is 8·16 = 128-dimensional
because e4e's output width is 8·width. SFE keeps the official depths at an eighth of the widths (``dev_sfe``).

The relevance file is the one deliberate shortcut: running ``precompute_relevance`` on even this generator
renders two images per style channel per sample (over a thousand renders, minutes on a shared CPU), so its
``fs3`` rows are seeded random unit vectors instead, while ``style_std``/``style_mean`` are the generator's real
statistics. The file has the precompute's format and loads through ``load_relevance``; random unit rows in a
64-d CLIP space give |fs3·dt| ≈ 0.12 typically, so the default beta (0.15) keeps ~20 % of the channels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.weights.bundle import DEV_WARNING, Bundle, Manifest, ModelFile, sha256_file

log = logging.getLogger(__name__)

ENCODER_WIDTH = 16          # the smallest IR-SE width whose SE gates keep a channel (16 // 16)
STYLE_DIM = 8 * ENCODER_WIDTH
RELEVANCE_STATS = 4096      # samples for the style statistics
LICENSE = "generated locally from random weights: no license restrictions, no meaning"

FILES = {"generator": "stylegan2-dev.pt", "encoder": "e4e-dev.pt", "clip": "clip-dev.pt",
         "relevance": "relevance-dev.npz", "identity": "arcface-dev.pt", "sfe": "sfe-dev.pt"}
SFE_WIDTH = 8  # the official SFE's widths / 8, its depths and key layout


def dev_channels(size: int) -> dict[int, int]:
    """Narrow widths per resolution: 64 up to 16², 32 up to 64², 16 above."""
    return {2 ** i: 64 if 2 ** i <= 16 else 32 if 2 ** i <= 64 else 16 for i in range(2, size.bit_length())}


def make_dev_bundle(directory: Path, size: int = 256, seed: int = 0) -> Bundle:
    """Write the development bundle into ``directory`` and return it loaded."""
    from pipeline.models.clip_model import save_clip_archive
    from pipeline.models.e4e import save_encoder
    from pipeline.models.sfe import FEATURE_RESOLUTION, save_sfe
    from pipeline.models.stylegan2 import save_generator

    if size < 16 or size & (size - 1):
        raise ValueError(f"size must be a power of two >= 16, got {size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    log.warning(DEV_WARNING)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        generator = dev_generator(size)
        latent_avg = generator.mean_latent(4096)[0]
        save_generator(directory / FILES["generator"], generator, latent_avg)
        encoder = dev_encoder(size, latent_avg)
        save_encoder(directory / FILES["encoder"], encoder,
                     {"encoder_type": "Encoder4Editing", "stylegan_size": size, "dev": True, "seed": seed})
        torch.save(dev_arcface().state_dict(), directory / FILES["identity"])  # model_ir_se50.pt's layout
        clip_model = dev_clip()
        save_clip_archive(clip_model, directory / FILES["clip"])
        write_dev_relevance(directory / FILES["relevance"], generator, embed_dim=clip_model.text_projection.shape[1],
                            seed=seed)
        # SFE last: its random draws must not shift the other models' weights (tests hold margins on them).
        files = dict(FILES)
        if size > FEATURE_RESOLUTION:  # SFE's feature replaces a block below the generator's last
            save_sfe(directory / FILES["sfe"], dev_sfe(generator))
        else:
            del files["sfe"]
    models = {role: ModelFile(file=name, url=None, sha256=sha256_file(directory / name),
                              bytes=(directory / name).stat().st_size, license=LICENSE,
                              source=f"python -m pipeline make-dev-bundle (size {size}, seed {seed})")
              for role, name in files.items()}
    Manifest(models, dev=True, extra={"dev_config": {"size": size, "seed": seed}}).write(directory)
    return Bundle.load(directory)


def write_dev_relevance(path: Path, generator, embed_dim: int, seed: int) -> None:
    """A relevance file in ``precompute_relevance``'s format: random unit fs3 rows, real style statistics."""
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    n_conv = sum(d for d, rgb in zip(generator.style_dims, generator.style_is_torgb, strict=True) if not rgb)
    fs3 = rng.standard_normal((n_conv, embed_dim)).astype(np.float32)
    fs3 /= np.linalg.norm(fs3, axis=1, keepdims=True)
    z = torch.from_numpy(rng.standard_normal((RELEVANCE_STATS, generator.style_dim)).astype(np.float32))
    styles = torch.cat(generator.styles(generator.mapping(z)), dim=1).double()
    meta = {"format": "styleclip-relevance/1", "dev_random_fs3": True, "seed": seed, "n_stats": RELEVANCE_STATS,
            "style_dims": list(generator.style_dims), "style_is_torgb": list(generator.style_is_torgb),
            "embed_dim": int(embed_dim)}
    with open(path, "wb") as f:
        np.savez(f, fs3=fs3, style_std=styles.std(0, unbiased=False).float().numpy(),
                 style_mean=styles.mean(0).float().numpy(), meta=np.array(json.dumps(meta)))


def dev_generator(size: int):
    from pipeline.models.stylegan2 import Generator

    return Generator(size, style_dim=STYLE_DIM, n_mlp=8, channels=dev_channels(size)).eval()


def dev_encoder(size: int, latent_avg: torch.Tensor):
    from pipeline.models.e4e import E4E, Encoder4Editing

    encoder = Encoder4Editing(50, "ir_se", stylegan_size=size, width=ENCODER_WIDTH).eval()
    # Random heads would put the codes far outside the generator's W distribution; small ones keep them near
    # latent_avg, where a random generator still draws something face-sized instead of saturating.
    for block in encoder.styles:
        block.linear.weight.mul_(0.01)
    return E4E(encoder, latent_avg)


def dev_sfe(generator):
    """StyleFeatureEditor for ``generator``: its heads give that generator's W+, its feature has the generator's
    64² width. Random heads are scaled down as e4e's (codes near ``latent_avg``); the fuser passes the
    generator's own feature through and the Feature Editor subtracts the edit's change of it (what the trained
    ones approximate), each plus small random residual branches: dev inversions and edits then look like the
    generator's own renders, not noise over noise."""
    from pipeline.models.sfe import FEATURE_RESOLUTION, SFE, SFEConfig

    depths = [blocks for _, blocks in SFEConfig().stages]
    cfg = SFEConfig(stem=SFE_WIDTH, stages=tuple((SFE_WIDTH * 2 ** i, n) for i, n in enumerate(depths)),
                    n_styles=generator.n_latent, style_dim=generator.style_dim,
                    feature_channels=generator.channels[FEATURE_RESOLUTION])
    sfe = SFE(cfg).eval()
    eye = torch.eye(cfg.feature_channels)[:, :, None, None]
    for head in sfe.inverter.fs_backbone.styles:
        head.weight.mul_(0.01)
        head.bias.zero_()
    # fuser: cat([predicted, generator's]) → the generator's; editor: cat([fused, delta]) → fused − delta
    for fuser, (first, second) in ((sfe.inverter.fuser, (0.0, 1.0)), (sfe.feature_editor, (1.0, -1.0))):
        fuser.conv.weight.copy_(torch.cat([first * eye, second * eye], dim=1))
        fuser.conv.bias.zero_()
        for block in fuser.body:
            block.body[5].weight.mul_(0.01)  # the BatchNorm closing the residual branch
    return sfe


def dev_arcface():
    """The identity model of optimize mode (ArcFace IR-SE-50) at encoder width."""
    from pipeline.models.arcface import ArcFace

    return ArcFace(width=ENCODER_WIDTH).eval()


def dev_clip():
    """A 2-layer ViT/2-layer text CLIP at 32² input with the real tokenizer vocabulary and context."""
    from clip.model import CLIP

    return CLIP(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                transformer_layers=2).float().eval()
