"""StyleCLIP global directions as plain functions over tensors.

Reference: StyleCLIP ``global_torch/StyleCLIP.py`` (``zeroshot_classifier``, ``GetDt``, ``GetBoundary``,
``SplitS``) and ``manipulate.py`` (``MSCode``). The flow for one edit:

1. ``text_direction``: CLIP embeds the neutral and the target text through 79 prompt templates each; the
   direction ``dt`` is the normalized difference of the two normalized mean embeddings.
2. ``style_direction``: the relevance matrix ``fs3`` (one row per conv style channel: how that channel moves
   the CLIP image embedding) projected on ``dt``; channels below ``beta`` are dropped, the rest scaled so the
   strongest is 1, then by each channel's std. toRGB layers are never edited.
3. ``apply``: ``styles + alpha * direction`` for every alpha at once.

Several changes in one edit (``Change``: a neutral/target pair and a weight) live in the same style space, so
``combine`` adds their directions, each computed exactly as for a single edit, weighted; the alphas then scale
the sum. One change of weight 1 is that change's direction itself, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import EMPTY_DIRECTION, INVALID_PARAMETER, MODEL_INVALID, PipelineError
from pipeline.models.clip_model import text_features

log = logging.getLogger(__name__)

# The prompt ensemble of StyleCLIP (CLIP's ImageNet templates minus 'a photo of many {}.').
IMAGENET_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.', 'a sculpture of a {}.', 'a photo of the hard to see {}.',
    'a low resolution photo of the {}.', 'a rendering of a {}.', 'graffiti of a {}.', 'a bad photo of the {}.',
    'a cropped photo of the {}.', 'a tattoo of a {}.', 'the embroidered {}.', 'a photo of a hard to see {}.',
    'a bright photo of a {}.', 'a photo of a clean {}.', 'a photo of a dirty {}.', 'a dark photo of the {}.',
    'a drawing of a {}.', 'a photo of my {}.', 'the plastic {}.', 'a photo of the cool {}.',
    'a close-up photo of a {}.', 'a black and white photo of the {}.', 'a painting of the {}.',
    'a painting of a {}.', 'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.',
    'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.', 'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.', 'a photo of the {}.', 'a good photo of the {}.', 'a rendering of the {}.',
    'a {} in a video game.', 'a photo of one {}.', 'a doodle of a {}.', 'a close-up photo of the {}.',
    'a photo of a {}.', 'the origami {}.', 'the {} in a video game.', 'a sketch of a {}.', 'a doodle of the {}.',
    'a origami {}.', 'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.',
    'a photo of the clean {}.', 'a photo of a large {}.', 'a rendition of a {}.', 'a photo of a nice {}.',
    'a photo of a weird {}.', 'a blurry photo of a {}.', 'a cartoon {}.', 'art of a {}.', 'a sketch of the {}.',
    'a embroidered {}.', 'a pixelated photo of a {}.', 'itap of the {}.', 'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.', 'a plushie {}.', 'a photo of the nice {}.', 'a photo of the small {}.',
    'a photo of the weird {}.', 'the cartoon {}.', 'art of the {}.', 'a drawing of the {}.',
    'a photo of the large {}.', 'a black and white photo of a {}.', 'the plushie {}.', 'a dark photo of a {}.',
    'itap of a {}.', 'graffiti of the {}.', 'a toy {}.', 'itap of my {}.', 'a photo of a cool {}.',
    'a photo of a small {}.', 'a tattoo of the {}.',
)

MAX_ALPHAS = 16
ALPHA_LIMIT = 10.0
MAX_TEXT_CHARS = 300
MAX_CHANGES = 8          # changes combined in one edit (the service sets its own, smaller, limit)
MAX_CHANGE_WEIGHT = 2.0  # |weight| of one change
COMMON_NEUTRAL = "a face"  # the neutral text of nearly every edit (the app's default): embedded at load
TEXTS_FOLDER = "texts"     # per-text embeddings, beside the directions in a TextDirectionCache's folder


# --- text -------------------------------------------------------------------------------------------------

def text_embeddings(model: torch.nn.Module, texts: Sequence[str],
                    templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
    """Template-ensembled CLIP embedding of each text ``[len(texts), D]``: the re-normalized mean of the
    L2-normalized embeddings of every template filled with the text. All prompts go through CLIP in one call (one
    trie of their shared token prefixes while it stays small: ``text_features``)."""
    for text in texts:
        _check_text(text)
    if not templates:
        raise PipelineError(INVALID_PARAMETER, "at least one prompt template is needed")
    prompts = [template.format(text) for text in texts for template in templates]
    features = text_features(model, prompts)
    features = features / features.norm(dim=-1, keepdim=True)
    per_text = features.view(len(texts), len(templates), -1).mean(dim=1)
    return per_text / per_text.norm(dim=-1, keepdim=True)


def text_embedding(model: torch.nn.Module, text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
    """Template-ensembled CLIP embedding ``[D]`` of one text."""
    return text_embeddings(model, [text], templates)[0]


def text_direction(model: torch.nn.Module, neutral: str, target: str,
                   templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
    """The unit CLIP-space direction ``dt [D]`` from ``neutral`` to ``target`` (StyleCLIP ``GetDt``)."""
    target_emb, neutral_emb = text_embeddings(model, [target, neutral], templates)
    return direction_between(neutral_emb, target_emb, neutral, target)


def direction_between(neutral_emb: torch.Tensor, target_emb: torch.Tensor, neutral: str = "neutral",
                      target: str = "target") -> torch.Tensor:
    """``(target - neutral) / |target - neutral|``; identical embeddings are a user error, not a NaN."""
    dt = target_emb - neutral_emb
    norm = float(dt.norm())
    if not math.isfinite(norm) or norm < 1e-6:
        raise PipelineError(INVALID_PARAMETER, f"neutral {neutral!r} and target {target!r} give the same CLIP "
                                               "embedding; describe the change in the target text")
    return dt / norm


def check_fits(model: torch.nn.Module, texts: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES) -> None:
    """Every text fits CLIP's context in every prompt template, or ``invalid_parameter`` naming the text: a
    check of tokens only (milliseconds), so a caller can refuse a text before the costly inversion."""
    from pipeline.models.clip_model import tokenize

    for text in texts:
        _check_text(text)
        try:
            tokenize(model, [template.format(text) for template in templates])
        except PipelineError:
            raise PipelineError(INVALID_PARAMETER, f"text too long for CLIP ({model.context_length} tokens with "
                                                   f"its prompt templates): {text[:60]!r}…") from None


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise PipelineError(INVALID_PARAMETER, "neutral and target texts must be non-empty")
    if len(text) > MAX_TEXT_CHARS:
        raise PipelineError(INVALID_PARAMETER, f"text longer than {MAX_TEXT_CHARS} characters")


class TextDirectionCache:
    """``text_direction`` memoized in memory (LRU) and, when ``dir`` is given, on disk as ``<sha256>.npy``.

    The key covers everything the direction depends on: the CLIP model's id, the templates and both texts.
    Per-text embeddings are memoized too (in memory, and on disk in ``texts/``), so a new target with a known
    neutral ("a face") embeds 79 prompts instead of 158. Thread-safe; a corrupt or foreign file is recomputed,
    never trusted.
    """

    def __init__(self, dir: Path | None, model_id: str, maxsize: int = 512):
        self.dir = Path(dir) if dir is not None else None
        self.model_id = model_id
        self.maxsize = maxsize
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pending: dict[str, Future] = {}  # pairs being computed by ``prefetch``
        self._lock = threading.Lock()
        self._write_warned = False

    def key(self, neutral: str, target: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> str:
        blob = json.dumps([self.model_id, list(templates), neutral, target], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, model: torch.nn.Module, neutral: str, target: str,
            templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
        """The direction ``dt [D]`` (float32, CPU), computed with ``model`` only on a miss."""
        key = self.key(neutral, target, templates)
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return torch.from_numpy(self._memory[key].copy())
            pending = self._pending.get(key)
        if pending is not None:  # a prefetch of this pair: its result (or its error), not a second computation
            return pending.result().clone()
        return self._fill(key, model, neutral, target, templates)

    def _fill(self, key: str, model: torch.nn.Module, neutral: str, target: str,
              templates: Sequence[str]) -> torch.Tensor:
        """The direction from disk, else computed (and written); remembered in memory."""
        dt = self._read(key)
        if dt is None:
            dt = self._compute(model, neutral, target, templates).numpy()
            self._write(key, dt)
        with self._lock:
            _remember(self._memory, key, dt, self.maxsize)
        return torch.from_numpy(dt.copy())

    def prefetch(self, model: torch.nn.Module, neutral: str, target: str,
                 templates: Sequence[str] = IMAGENET_TEMPLATES) -> Future:
        """``get`` on a thread of its own, so a direction is computed while the caller does other work (the
        inversion); a ``get`` of the same pair meanwhile waits for it. The future holds the direction or the
        error ``get`` would raise."""
        key = self.key(neutral, target, templates)
        future: Future = Future()
        with self._lock:
            if key in self._pending:
                return self._pending[key]
            if key in self._memory:
                future.set_result(torch.from_numpy(self._memory[key].copy()))
                return future
            self._pending[key] = future

        def run() -> None:
            try:
                future.set_result(self._fill(key, model, neutral, target, templates))
            except BaseException as error:  # handed to whoever waits on the future, raised there
                future.set_exception(error)
            finally:
                with self._lock:
                    self._pending.pop(key, None)

        threading.Thread(target=run, name="text-direction", daemon=True).start()
        return future

    def _compute(self, model: torch.nn.Module, neutral: str, target: str, templates: Sequence[str]) -> torch.Tensor:
        # target first, as in text_direction: a cold pair gives exactly its numbers
        known = self.embeddings(model, [target, neutral], templates)
        return direction_between(known[neutral], known[target], neutral, target)

    def embeddings(self, model: torch.nn.Module, texts: Sequence[str],
                   templates: Sequence[str] = IMAGENET_TEMPLATES) -> dict[str, torch.Tensor]:
        """The ensembled embedding of each distinct text, from memory, else from disk, else the missing ones
        through CLIP in one call; each kept for the next pair that shares the text (most share the neutral
        ``COMMON_NEUTRAL``, which ``Editor`` embeds when it loads its models)."""
        keys = {text: self.key("", text, templates) for text in texts}  # "" is never a valid neutral
        with self._lock:
            known = {text: self._embeddings[k] for text, k in keys.items() if k in self._embeddings}
        for text in keys.keys() - known.keys():
            stored = self._read(keys[text], TEXTS_FOLDER)
            if stored is not None:
                known[text] = torch.from_numpy(stored)
        missing = [text for text in keys if text not in known]
        if missing:
            fresh = text_embeddings(model, missing, templates).detach().float().cpu()
            for text, embedding in zip(missing, fresh, strict=True):
                known[text] = embedding
                self._write(keys[text], embedding.numpy(), TEXTS_FOLDER)
        with self._lock:
            for text, k in keys.items():
                _remember(self._embeddings, k, known[text], self.maxsize)
        return known

    def _path(self, key: str, folder: str = "") -> Path | None:
        return self.dir / folder / f"{key}.npy" if self.dir is not None else None

    def _read(self, key: str, folder: str = "") -> np.ndarray | None:
        path = self._path(key, folder)
        if path is None or not path.is_file():
            return None
        try:
            dt = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if dt.ndim != 1 or dt.dtype != np.float32 or not np.all(np.isfinite(dt)):
            return None
        return dt

    def _write(self, key: str, dt: np.ndarray, folder: str = "") -> None:
        """Best effort: a cache folder that cannot be written (read-only, full disk) costs a recomputation
        next time, never the edit; said once per cache, not once per edit."""
        path = self._path(key, folder)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a concurrent reader sees either no file or a whole one.
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        except OSError as error:
            self._write_failed(error)
            return
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, dt)
            os.replace(tmp, path)
        except OSError as error:
            Path(tmp).unlink(missing_ok=True)
            self._write_failed(error)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _write_failed(self, error: OSError) -> None:
        with self._lock:
            first, self._write_warned = not self._write_warned, True
        if first:
            log.warning("text directions are not cached on disk (%s): %s; each new pair is computed again "
                        "after a restart", self.dir, error)


def _remember(lru: OrderedDict, key: str, value, maxsize: int) -> None:
    lru[key] = value
    lru.move_to_end(key)
    while len(lru) > maxsize:
        lru.popitem(last=False)


# --- style space ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StyleDirection:
    """A direction in style space: one tensor ``[C]`` per style layer (toRGB layers all zero), and how many
    channels passed the threshold."""

    layers: tuple[torch.Tensor, ...]
    channels_kept: int

    def flat(self) -> torch.Tensor:
        return torch.cat(self.layers)


@dataclass(frozen=True)
class Change:
    """One text change of an edit: move from ``neutral`` towards ``target``, ``weight`` times as far."""

    neutral: str
    target: str
    weight: float = 1.0


def check_changes(changes: Sequence[Change]) -> list[Change]:
    """The changes as a list, or ``invalid_parameter`` naming the problem (count, texts, weights)."""
    changes = list(changes)
    if not 1 <= len(changes) <= MAX_CHANGES:
        raise PipelineError(INVALID_PARAMETER, f"between 1 and {MAX_CHANGES} changes are needed, got {len(changes)}")
    for i, change in enumerate(changes):
        if not isinstance(change, Change):
            raise PipelineError(INVALID_PARAMETER, f"change {i} must be a Change, got {type(change).__name__}")
        for name, text in (("neutral", change.neutral), ("target", change.target)):
            if not isinstance(text, str) or not text.strip():
                raise PipelineError(INVALID_PARAMETER, f"change {i}: {name} text must be a non-empty string")
            if len(text) > MAX_TEXT_CHARS:
                raise PipelineError(INVALID_PARAMETER, f"change {i}: {name} text is longer than {MAX_TEXT_CHARS} "
                                                       "characters")
        w = change.weight
        if not _is_number(w) or not math.isfinite(w) or w == 0 or abs(w) > MAX_CHANGE_WEIGHT:
            raise PipelineError(INVALID_PARAMETER, f"change {i}: weight must be a non-zero number in "
                                                   f"[-{MAX_CHANGE_WEIGHT:g}, {MAX_CHANGE_WEIGHT:g}], got {w!r}")
    return changes


def combine(directions: Sequence[StyleDirection], weights: Sequence[float]) -> StyleDirection:
    """The weighted sum of style directions, layer by layer (``channels_kept``: channels any of them moves).
    One direction of weight 1 is returned as it is."""
    if len(directions) != len(weights) or not directions:
        raise ValueError(f"{len(directions)} directions and {len(weights)} weights")
    if len(directions) == 1 and weights[0] == 1:
        return directions[0]
    layers = []
    for parts in zip(*(d.layers for d in directions), strict=True):
        total = parts[0] * float(weights[0])
        for part, weight in zip(parts[1:], weights[1:], strict=True):
            total = total + part * float(weight)
        layers.append(total)
    moved = int(torch.stack([d.flat() != 0 for d in directions]).any(0).sum())
    return StyleDirection(tuple(layers), moved)


def style_direction(fs3: torch.Tensor, dt: torch.Tensor, beta: float, style_std: torch.Tensor,
                    style_dims: Sequence[int], style_is_torgb: Sequence[bool]) -> StyleDirection:
    """StyleCLIP ``GetBoundary`` + ``SplitS(if_std=True)``.

    fs3 ``[conv_channels, D]`` (conv layers only, in style-layer order), dt ``[D]``, style_std ``[total]``
    (all layers concatenated in style-layer order); ``style_dims``/``style_is_torgb`` describe each layer.
    """
    check_beta(beta)
    conv_dims = [d for d, rgb in zip(style_dims, style_is_torgb, strict=True) if not rgb]
    if fs3.ndim != 2 or fs3.shape[0] != sum(conv_dims) or dt.shape != (fs3.shape[1],):
        raise PipelineError(MODEL_INVALID, f"relevance fs3 {tuple(fs3.shape)} does not fit a generator with "
                                           f"{sum(conv_dims)} conv style channels and a {tuple(dt.shape)} direction")
    if style_std.shape != (sum(style_dims),):
        raise PipelineError(MODEL_INVALID, f"style std has {tuple(style_std.shape)} entries, the generator "
                                           f"{sum(style_dims)}")
    # float64: the threshold decision must not depend on the device's summation order.
    relevance = fs3.double() @ dt.to(fs3.device).double()
    kept = relevance.abs() >= beta
    channels_kept = int(kept.sum())
    if channels_kept == 0:
        raise PipelineError(EMPTY_DIRECTION, f"no style channel reaches relevance beta={beta:g} for this text "
                                             f"(strongest is {float(relevance.abs().max()):.3f}); lower beta")
    relevance = torch.where(kept, relevance, torch.zeros_like(relevance))
    relevance = (relevance / relevance.abs().max()).to(style_std.dtype).to(style_std.device)

    layers, conv_start, std_start = [], 0, 0
    for dim, is_rgb in zip(style_dims, style_is_torgb, strict=True):
        std = style_std[std_start:std_start + dim]
        if is_rgb:
            layers.append(torch.zeros_like(std))
        else:
            layers.append(relevance[conv_start:conv_start + dim] * std)
            conv_start += dim
        std_start += dim
    return StyleDirection(tuple(layers), channels_kept)


def apply(styles: Sequence[torch.Tensor], direction: StyleDirection | Sequence[torch.Tensor],
          alphas: Sequence[float]) -> list[torch.Tensor]:
    """``styles + alpha * direction`` for every alpha (StyleCLIP ``MSCode``): per layer ``[1, C]`` in,
    ``[len(alphas), C]`` out, so the generator renders all alphas in one batch."""
    check_alphas(alphas)
    layers = direction.layers if isinstance(direction, StyleDirection) else tuple(direction)
    if len(layers) != len(styles):
        raise PipelineError(MODEL_INVALID, f"direction has {len(layers)} layers, the styles {len(styles)}")
    out = []
    for style, delta in zip(styles, layers, strict=True):
        style = style.reshape(1, -1)
        a = torch.as_tensor(list(alphas), dtype=style.dtype, device=style.device).view(-1, 1)
        out.append(style + a * delta.to(style.device, style.dtype).reshape(1, -1))
    return out


def check_beta(beta: float) -> None:
    if not _is_number(beta) or not math.isfinite(beta) or not 0 < beta < 1:
        raise PipelineError(INVALID_PARAMETER, f"beta must be a number in (0, 1), got {beta!r}")


def check_alphas(alphas: Sequence[float]) -> None:
    if not 1 <= len(alphas) <= MAX_ALPHAS:
        raise PipelineError(INVALID_PARAMETER, f"between 1 and {MAX_ALPHAS} alphas are needed, got {len(alphas)}")
    for alpha in alphas:
        if not _is_number(alpha) or not math.isfinite(alpha) or abs(alpha) > ALPHA_LIMIT:
            raise PipelineError(INVALID_PARAMETER,
                                f"each alpha must be a number in [-{ALPHA_LIMIT:g}, {ALPHA_LIMIT:g}], got {alpha!r}")


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)
