"""Where the official weights come from: every URL pinned to a commit, with the publisher's size and hash.

Each role lists its sources in the order ``download`` tries them; ``MODEL_MIRROR_URL`` (a site's own copy,
``{MODEL_MIRROR_URL}/{file}``) goes first when set, and ``MODEL_SOURCES_FILE`` (a JSON file of entries in the
manifest's format, by role) replaces entries wholesale (rehearsals, private hubs). Hashes come from the
publishers: Hugging Face shows each LFS file's sha256 and size (they are pinned here with the commit in the URL
instead of ``main``), OpenAI puts CLIP's sha256 in its URL, and a GitHub file at a commit is named by its git
object id. Where and when each fact was checked: docs/MODELS.md. A source without a hash of its own must give a
file with one of its entry's published hashes; only an entry with none at all (a sources file's) is pinned,
after the file loads as its role's model (``pipeline/weights/download.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.errors import INVALID_PARAMETER, PipelineError
from pipeline.weights.bundle import ModelFile, Source

MIRROR_ENV = "MODEL_MIRROR_URL"
SOURCES_FILE_ENV = "MODEL_SOURCES_FILE"

_HF = "https://huggingface.co"
_RAW = "https://raw.githubusercontent.com"
NC_LICENSE = "NVIDIA Source Code License-NC (non-commercial use only)"

STYLEGAN2_FFHQ = ModelFile(
    file="stylegan2-ffhq-config-f.pt", url=None, sha256=None, bytes=None, license=NC_LICENSE,
    source="NVIDIA StyleGAN2 FFHQ config-f, converted to PyTorch by rosinality/stylegan2-pytorch "
           "(original: https://drive.google.com/file/d/1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT)",
    sources=(
        Source(f"{_HF}/akhaliq/OneshotCLIP-stylegan2-ffhq/resolve/024390a9508cb2d124dfaa8ec1caee3ad1a9da59/"
               "stylegan2-ffhq-config-f.pt",
               sha256="bae494ef77e32a9cd1792a81a3c167692a0e64f6bcd8b06592ff42917e2ed46e", bytes=381_462_551,
               note="full checkpoint (g, d, g_ema, latent_avg)"),
        Source(f"{_HF}/wmpscc/StyleGene/resolve/e301280ac9a63ba7ebb4be3311128bb6c9cb9ae2/stylegan2-ffhq-config-f.pt",
               sha256="d0d7c5e71531c816b8cf01037393ee4fb65ed09dcb6434cc0197771e3051199b", bytes=132_729_083,
               note="g_ema only"),
        Source(f"{_HF}/aaronb/StyleGAN2/resolve/5fde0cdb3664b04e8126dc6b0cab010e7813c18b/stylegan2-ffhq-config-f.pt",
               sha256="646c7e7c5e3fc4cf8e83dcfe5dce505cc74b61d8982c09563932aa15c4baf18c", bytes=132_717_355,
               note="g_ema only"),
    ),
)
E4E_FFHQ = ModelFile(
    file="e4e_ffhq_encode.pt", url=None, sha256=None, bytes=None,
    license="MIT (code, omertov/encoder4editing); trained with the NC-licensed generator: non-commercial use only",
    source="omertov/encoder4editing FFHQ inversion encoder "
           "(original: https://drive.google.com/file/d/1cUv_reLE6k3604or78EranS7XzuVMWeO)",
    sources=(
        Source(f"{_HF}/public-data/e4e/resolve/fdd18714fc6b639487adbd901f16f67eb24ba786/e4e_ffhq_encode.pt",
               sha256="2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999", bytes=1_201_649_680),
        Source(f"{_HF}/wmpscc/StyleGene/resolve/e301280ac9a63ba7ebb4be3311128bb6c9cb9ae2/e4e_ffhq_encode.pt",
               sha256="2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999", bytes=1_201_649_680),
        Source(f"{_HF}/AIRI-Institute/HairFastGAN/resolve/47855f8ea72b02294649385211a1ae1fd7dcb58e/"
               "pretrained_models/encoder4editing/e4e_ffhq_encode.pt",
               note="no hash of its own found: accepted when it is the published file above"),
    ),
)
_CLIP_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
CLIP_VIT_B32 = ModelFile(
    file="ViT-B-32.pt", url=None, sha256=None, bytes=None, license="MIT (OpenAI CLIP)",
    source="openai/CLIP ViT-B/32 TorchScript archive (clip/clip.py _MODELS)",
    sources=(
        Source(f"https://openaipublic.azureedge.net/clip/models/{_CLIP_SHA256}/ViT-B-32.pt",
               sha256=_CLIP_SHA256, bytes=353_976_522, note="OpenAI's own URL (reported 404 since 2025)"),
        Source(f"{_HF}/datasets/fuyun1107/clip-for-vlp/resolve/a3963bff1f3f51b1520f29e8fe6cf9cf9f334f1f/ViT-B-32.pt",
               sha256=_CLIP_SHA256, bytes=353_976_522),
        Source(f"{_HF}/SphereLab/vision_models_in_FDA/resolve/96dbcaeb4a660faa5ecfee932d74091327e1ace1/"
               "ViT-B-32/ViT-B-32.pt", sha256=_CLIP_SHA256, bytes=353_976_522),
    ),
)
_STYLECLIP_LICENSE = "MIT (orpatashnik/StyleCLIP); computed from the NC-licensed generator: non-commercial use only"
RELEVANCE_FFHQ = ModelFile(
    file="fs3.npy", url=None, sha256=None, bytes=None, license=_STYLECLIP_LICENSE,
    source="StyleCLIP global directions relevance matrix fs3 for FFHQ (orpatashnik/StyleCLIP "
           "global_torch/npy/ffhq/fs3.npy; the same git blob as rotemtzaban/STIT's copy)",
    sources=(
        Source(f"{_RAW}/orpatashnik/StyleCLIP/f87a47f7fc39e19a1f6c88293875692b303bf168/global_torch/npy/ffhq/fs3.npy",
               git_blob="ef9dc0a49a4e2ffe1c81b8632baab6e3a4466726"),
        Source(f"{_RAW}/rotemtzaban/STIT/fac087f2b87f75ce85b1222cb5e0e4ea24474348/editings/styleclip_global/fs3.npy",
               git_blob="ef9dc0a49a4e2ffe1c81b8632baab6e3a4466726"),
    ),
)
RELEVANCE_STATS_FFHQ = ModelFile(
    file="S_mean_std", url=None, sha256=None, bytes=None,
    license="MIT (rotemtzaban/STIT); computed from the NC-licensed generator: non-commercial use only",
    source="per-channel style mean and std of the FFHQ generator, StyleCLIP's format (a pickle of two lists of "
           "26 float32 arrays, read with a numpy-only unpickler); StyleCLIP never published it. Without a "
           "source, `python -m pipeline compute-style-stats` computes it from the generator",
    sources=(
        Source(f"{_RAW}/rotemtzaban/STIT/fac087f2b87f75ce85b1222cb5e0e4ea24474348/editings/styleclip_global/S_mean_std",
               sha256="d35879347e5df307287404d08b9166c4e304c544c07e5c0d345d346bde77656f", bytes=75_092,
               git_blob="4530e6451de15f796f6c1a6e056ab78758858fcf"),
    ),
)
_SFE_COMMIT = "7c10a9d146527fefbd3f089434cf11600a6ced91"  # "deleta large, add light models"
SFE_EDITOR = ModelFile(
    file="sfe_editor_light.pt", url=None, sha256=None, bytes=None,
    license="MIT (ControlGenAI/StyleFeatureEditor, formerly AIRI-Institute); trained with the NC-licensed generator: "
            "non-commercial use only",
    source="StyleFeatureEditor (CVPR 2024) Inverter and Feature Editor, the light checkpoint (their state dicts "
           "only, under inverter.* and encoder.*)",
    sources=(
        Source(f"{_HF}/AIRI-Institute/StyleFeatureEditor/resolve/{_SFE_COMMIT}/pretrained_models/sfe_editor_light.pt",
               sha256="ced3e79813ec6ff1418404576cc43e3c92849ab124ec87cd72be42dcb25311ea", bytes=649_325_957),
    ),
)
OFFICIAL = {"generator": STYLEGAN2_FFHQ, "encoder": E4E_FFHQ, "clip": CLIP_VIT_B32, "relevance": RELEVANCE_FFHQ,
            "relevance_stats": RELEVANCE_STATS_FFHQ, "sfe": SFE_EDITOR}
# roles that `download` can make locally when no source answers
COMPUTABLE = ("relevance_stats",)


def official_entries(sources_file: str | Path | None = None) -> dict[str, ModelFile]:
    """The official table, with the roles of ``sources_file`` (default ``$MODEL_SOURCES_FILE``) replaced."""
    sources_file = sources_file or os.environ.get(SOURCES_FILE_ENV)
    entries = dict(OFFICIAL)
    if not sources_file:
        return entries
    try:
        raw = json.loads(Path(sources_file).read_text())
    except (OSError, ValueError) as exc:
        raise PipelineError(INVALID_PARAMETER, f"{SOURCES_FILE_ENV}={sources_file}: not readable JSON ({exc})") from exc
    if not isinstance(raw, dict) or set(raw) - set(OFFICIAL):
        raise PipelineError(INVALID_PARAMETER, f"{SOURCES_FILE_ENV}={sources_file}: expected an object with roles "
                                               f"among {sorted(OFFICIAL)}")
    for role, entry in raw.items():
        entries[role] = ModelFile.from_dict(role, {**OFFICIAL[role].to_dict(), **entry})
    return entries


def mirror_source(entry: ModelFile, mirror: str | None = None) -> Source | None:
    """``{MODEL_MIRROR_URL}/{file}`` (default ``$MODEL_MIRROR_URL``). It carries no hash of its own: the file
    must match one the publishers give for this entry (else, with none published, load as its role's model)."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV, "")
    if not mirror:
        return None
    return Source(f"{mirror.rstrip('/')}/{entry.file}", note=MIRROR_ENV)
