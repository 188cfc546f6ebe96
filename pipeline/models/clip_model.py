"""OpenAI CLIP: loading (official TorchScript archive or plain state dict), text and image features.

The model class is the `clip` package's own (PyPI ``clip-anytorch``), so the numbers are the reference's. We only
add loading that never silently drops keys, float32 everywhere (``clip.model.build_model`` converts to float16,
which would round float32 checkpoints), and two speed-ups that do not change the result:

* text goes through the transformer once per distinct token prefix (``clip_text``): the causal mask means a
  token's state depends only on the tokens up to it, so nothing after a prompt's EOT is computed and prompts
  that share a prefix share its states (a text direction's 79 prompt templates: ~0.56 of the padded tokens);
* ``clip_preprocess`` is a differentiable tensor version of CLIP's PIL transform (resize, center crop, normalize),
  usable inside an optimization loop and on generator output of any size.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pipeline.errors import INVALID_PARAMETER, MODEL_INVALID, MODEL_MISSING, PipelineError

if TYPE_CHECKING:
    from clip.model import CLIP

# CLIP's input normalization (clip/clip.py `_transform`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Entries that the official TorchScript archive stores beside the weights; not parameters of `clip.model.CLIP`.
_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def load_clip(path: str | Path, device: str | torch.device = "cpu") -> CLIP:
    """Load a CLIP checkpoint (TorchScript archive such as the official ``ViT-B-32.pt``, or a state dict).

    The architecture is inferred from the tensor shapes; the result is float32, in eval mode, on ``device``.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(MODEL_MISSING, f"CLIP checkpoint not found: {path}")
    state_dict = _read_state_dict(path)
    try:
        model = build_clip(state_dict)
    except (KeyError, IndexError, RuntimeError, ValueError, AssertionError, ZeroDivisionError) as exc:
        raise PipelineError(MODEL_INVALID, f"{path} is not a CLIP checkpoint: {exc}") from exc
    return model.to(device)


def build_clip(state_dict: Mapping[str, torch.Tensor]) -> CLIP:
    """A float32 ``clip.model.CLIP`` whose architecture is inferred from ``state_dict`` shapes, weights loaded
    strictly (every key used, none missing)."""
    from clip.model import build_model

    weights = {k: v.float() if v.is_floating_point() else v
               for k, v in state_dict.items() if k not in _ARCHIVE_EXTRAS}
    # build_model converts to float16 before loading; build the architecture there, then load again in float32.
    model = build_model(copy.copy(weights)).float()
    model.load_state_dict(weights, strict=True)
    return model.eval().requires_grad_(False)


def save_clip_archive(model: torch.nn.Module, path: str | Path) -> None:
    """Write ``model`` as a TorchScript archive like the official one (traced ``forward``, ``encode_image`` and
    ``encode_text``, with ``input_resolution``/``context_length``/``vocab_size`` beside the weights), so that a
    development bundle goes through the same loader path as the real ``ViT-B-32.pt``."""
    model = copy.deepcopy(model).float().eval().cpu()
    res, n_ctx, vocab = model.visual.input_resolution, model.context_length, model.vocab_size
    for name, value in (("input_resolution", res), ("context_length", n_ctx), ("vocab_size", vocab)):
        if hasattr(model, name):
            delattr(model, name)  # plain ints on `CLIP`; the official archive holds them as tensors
        model.register_buffer(name, torch.tensor(value))
    image = torch.zeros(1, 3, res, res)
    text = torch.zeros(1, n_ctx, dtype=torch.long)
    text[0, 0], text[0, 1] = vocab - 2, vocab - 1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, torch.jit.TracerWarning))
        traced = torch.jit.trace_module(
            model, {"forward": (image, text), "encode_image": image, "encode_text": text}, check_trace=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(path))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """TorchScript archive first (what OpenAI ships), then a plain ``torch.save`` state dict."""
    raw = path.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; OpenAI ships it anyway
            return dict(torch.jit.load(io.BytesIO(raw), map_location="cpu").state_dict())
    except (RuntimeError, ValueError):
        pass
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError, TypeError,
            AttributeError) as exc:  # what torch.load raises on bytes that are not a checkpoint
        raise PipelineError(MODEL_INVALID, f"{path} is neither a TorchScript archive nor a state dict: "
                                           f"{type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PipelineError(MODEL_INVALID, f"{path} does not hold a CLIP state dict")
    return dict(obj)


# --- text -------------------------------------------------------------------------------------------------

def tokenize(model: torch.nn.Module, texts: Sequence[str]) -> torch.Tensor:
    """``clip.tokenize`` at the model's context length; a text that does not fit is a typed error."""
    import clip

    try:
        return clip.tokenize(list(texts), context_length=model.context_length)
    except RuntimeError as exc:  # clip raises RuntimeError("Input ... is too long for context length 77")
        raise PipelineError(INVALID_PARAMETER, f"text too long for CLIP ({model.context_length} tokens): "
                                               f"{exc}") from exc


def text_features(model: torch.nn.Module, texts: Sequence[str]) -> torch.Tensor:
    """Raw ``encode_text`` features ``[N, embed_dim]`` (not normalized), float32 on the model's device, in the
    order of ``texts`` (duplicates allowed). Each distinct token prefix goes through the transformer once
    (``clip_text``); prompts are grouped into tries of a bounded size."""
    from pipeline.models.clip_text import PrefixTrie, cut_at_eot, encode_trie, trie_chunks

    sequences = cut_at_eot(tokenize(model, texts))
    device = model.text_projection.device
    out = torch.empty(len(sequences), model.text_projection.shape[1], device=device)
    with torch.no_grad():
        for group in trie_chunks(sequences):
            trie = PrefixTrie.build([sequences[i] for i in group])
            out[torch.tensor(group, device=device)] = encode_trie(model, trie).float()
    return out


def _padded_text_features(model: torch.nn.Module, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """``text_features`` the plain way (``encode_text`` on batches cut at their longest prompt): the reference
    the trie is tested and benchmarked against."""
    tokens = tokenize(model, texts)
    device = model.text_projection.device
    out = []
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start:start + batch_size]
            # The EOT token has the largest id: its position + 1 is each text's real length.
            length = int(batch.argmax(dim=-1).max()) + 1
            out.append(model.encode_text(batch[:, :length].to(device)).float())
    return torch.cat(out) if out else torch.zeros(0, model.text_projection.shape[1], device=device)


# --- images -----------------------------------------------------------------------------------------------

def clip_preprocess(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] (any size) to CLIP's normalized input ``[B, 3, R, R]``, differentiably.

    Mirrors CLIP's transform: bicubic resize of the short side to R (antialiased, as PIL is when shrinking),
    center crop, mean/std normalization. Values are not clamped; callers that want the reference's uint8
    behaviour clamp first.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    x = (images + 1) / 2
    h, w = x.shape[-2:]
    # torchvision's Resize(int) and CenterCrop arithmetic, so crops line up with the reference pixel for pixel
    short, long = min(h, w), max(h, w)
    new_long = int(resolution * long / short)
    size = (resolution, new_long) if h <= w else (new_long, resolution)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=short > resolution)
    top, left = int(round((size[0] - resolution) / 2)), int(round((size[1] - resolution) / 2))
    x = x[..., top:top + resolution, left:left + resolution]
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def image_features(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Raw ``encode_image`` features ``[B, embed_dim]`` of an already-preprocessed input ``[B, 3, R, R]``."""
    return model.encode_image(pixels.to(model.dtype)).float()
