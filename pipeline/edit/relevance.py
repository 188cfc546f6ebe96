"""The relevance matrix ``fs3`` of StyleCLIP global directions, and the per-channel style statistics.

Reference: StyleCLIP ``global_torch/SingleChannel.py`` (``GetImgF``, ``GetFs``) with ``manipulate.py``
(``GenerateS``, ``GetCodeMS``, ``EditOneC``). For every conv style channel (toRGB layers are never edited):

1. sample W (seed, truncation 0.7 on the first 8 W+ rows), take the style vectors of all samples: their
   per-channel mean and std (``style_mean``, ``style_std``, population std like ``np.std``);
2. for the first ``n_images`` samples set the channel to its mean, then move it by ``-alpha`` and ``+alpha``
   times its std (``alpha = 5`` as in the reference), render, quantize to uint8 as the reference's PIL path
   does, and embed with CLIP;
3. per image, the normalized difference of the two normalized embeddings (``+`` minus ``-``); their mean over
   the images, normalized, is the channel's row of ``fs3 [conv_channels, D]``.

The precompute is chunked over channels and resumable: each finished chunk is a file in
``<out>.partial/``; a rerun with the same models and settings skips them, so a killed run loses at most one
chunk. Batches are fixed by the settings, so a resumed run writes the same bytes as an uninterrupted one.

Files: ours is one ``.npz`` (``fs3``, ``style_std``, ``style_mean``, ``meta`` = JSON string). The official
StyleCLIP FFHQ files (``fs3.npy`` and the ``S_mean_std`` pickle of per-layer ``[mean], [std]`` lists, all 26
layers of the 1024 generator) load with ``load_relevance(dir_or_fs3_npy)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.errors import INVALID_PARAMETER, MODEL_INVALID, MODEL_MISSING, PipelineError
from pipeline.models.clip_model import clip_preprocess, image_features
from pipeline.render.renderer import Renderer
from pipeline.weights.relevance_files import load_relevance_matrix, load_style_stats
from pipeline.weights.style_stats import FILE as STYLE_STATS_FILE
from pipeline.weights.style_stats import sample_styles

FORMAT = "styleclip-relevance/1"
# beside StyleCLIP's fs3.npy: its pickle (either spelling) or ours from `compute-style-stats`
STATS_NAMES = ("S_mean_std", "S_Mean_Std", STYLE_STATS_FILE)


@dataclass(frozen=True)
class RelevanceSettings:
    """Everything besides the two models that the result depends on (reference defaults)."""

    n_images: int = 100
    n_stats: int = 100_000
    seed: int = 0
    alpha: float = 5.0
    truncation: float = 0.7
    truncation_cutoff: int = 8
    chunk_channels: int = 64
    batch_size: int = 16


@dataclass(frozen=True)
class Relevance:
    """``fs3 [conv_channels, D]``, ``style_std``/``style_mean [total]`` (all style layers, toRGB included)."""

    fs3: torch.Tensor
    style_std: torch.Tensor
    style_mean: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)


def precompute_relevance(generator: torch.nn.Module, clip_model: torch.nn.Module, out: str | Path,
                         n_images: int = 100, chunk_channels: int = 64, seed: int = 0,
                         device: str | torch.device = "cpu", progress: bool = True, *, n_stats: int = 100_000,
                         alpha: float = 5.0, truncation: float = 0.7, truncation_cutoff: int = 8,
                         batch_size: int = 16, generator_sha: str | None = None) -> Path:
    """Compute ``fs3`` and the style statistics of ``generator`` as seen by ``clip_model``; write ``out``
    (``.npz``, atomically) and return it. Both models are moved to ``device``. Resumes from ``<out>.partial/``.
    """
    settings = RelevanceSettings(n_images, n_stats, seed, alpha, truncation, truncation_cutoff,
                                 chunk_channels, batch_size)
    _check_settings(settings)
    out = Path(out)
    device = torch.device(device)
    generator = generator.to(device).eval()
    clip_model = clip_model.to(device).eval()
    meta = {"format": FORMAT, **settings.__dict__, "generator_sha": generator_sha,
            "generator_fingerprint": _fingerprint(generator), "clip_fingerprint": _fingerprint(clip_model),
            "style_dims": list(generator.style_dims), "style_is_torgb": list(generator.style_is_torgb),
            "embed_dim": int(clip_model.text_projection.shape[1]),
            "device": device.type}  # float rounding differs between devices: no mixing chunks across them

    partial = _open_partial(out.with_suffix(".partial"), meta)
    with torch.inference_mode():
        stats = _load_or_compute_stats(partial, generator, settings, device)
        conv = _conv_channels(generator)
        renderer = Renderer(generator)
        starts = range(0, len(conv), settings.chunk_channels)
        done = [s for s in starts if (partial / f"chunk_{s:07d}.npy").is_file()]
        bar = tqdm(total=len(conv), initial=sum(min(settings.chunk_channels, len(conv) - s) for s in done),
                   unit="ch", desc="relevance", disable=not progress, dynamic_ncols=True)
        with bar:
            for start in starts:
                path = partial / f"chunk_{start:07d}.npy"
                if path.is_file():
                    continue
                channels = conv[start:start + settings.chunk_channels]
                rows = _relevance_rows(renderer, clip_model, stats, channels, settings)
                _atomic_write(path, lambda f, rows=rows: np.save(f, rows))
                bar.update(len(channels))
        fs3 = np.concatenate([np.load(partial / f"chunk_{s:07d}.npy") for s in starts])

    arrays = {"fs3": fs3, "style_std": stats["style_std"].astype(np.float32),
              "style_mean": stats["style_mean"].astype(np.float32), "meta": np.array(json.dumps(meta))}
    _atomic_write(out, lambda f: _write_npz(f, arrays))
    shutil.rmtree(partial)
    return out


# --- steps ------------------------------------------------------------------------------------------------

def _sample_styles(generator, settings: RelevanceSettings, device: torch.device):
    """Yield the flat style vectors ``[b, total]`` of ``n_stats`` truncated samples, batch by batch."""
    yield from sample_styles(generator, settings.n_stats, settings.seed, settings.truncation,
                             settings.truncation_cutoff, device)


def _load_or_compute_stats(partial: Path, generator, settings: RelevanceSettings, device) -> dict[str, np.ndarray]:
    """Style mean/std over all samples (Chan's parallel merge in float64) and the first ``n_images`` styles."""
    path = partial / "stats.npz"
    if path.is_file():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    count, mean, m2, base = 0, None, None, []
    for batch in _sample_styles(generator, settings, device):
        x = batch.double().cpu().numpy()
        if sum(len(b) for b in base) < settings.n_images:
            base.append(batch.float().cpu().numpy())
        b_mean, b_m2 = x.mean(axis=0), ((x - x.mean(axis=0)) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = len(x), b_mean, b_m2
            continue
        delta, total = b_mean - mean, count + len(x)
        mean = mean + delta * len(x) / total
        m2 = m2 + b_m2 + delta ** 2 * count * len(x) / total
        count = total
    stats = {"style_mean": mean, "style_std": np.sqrt(m2 / count),
             "base_styles": np.concatenate(base)[:settings.n_images]}
    _atomic_write(path, lambda f: _write_npz(f, stats))
    return stats


def _conv_channels(generator) -> list[tuple[int, int]]:
    """(flat style index, layer) of every conv style channel, in style-layer order (the rows of fs3)."""
    channels, offset = [], 0
    for layer, (dim, is_rgb) in enumerate(zip(generator.style_dims, generator.style_is_torgb, strict=True)):
        if not is_rgb:
            channels += [(offset + c, layer) for c in range(dim)]
        offset += dim
    return channels


def _relevance_rows(renderer: Renderer, clip_model, stats, channels, settings: RelevanceSettings) -> np.ndarray:
    """fs3 rows ``[len(channels), D]`` for one chunk (StyleCLIP ``EditOneC`` + ``GetImgF`` + ``GetFs``)."""
    generator = renderer.generator
    device = next(generator.parameters()).device
    base = torch.from_numpy(stats["base_styles"]).to(device)               # [N, total]
    mean = torch.from_numpy(stats["style_mean"]).float().to(device)
    std = torch.from_numpy(stats["style_std"]).float().to(device)
    n = base.shape[0]
    # one rendered image per (channel, sample, sign): channel-major, then sample, then (-alpha, +alpha)
    index = torch.tensor([c for c, _ in channels], device=device).repeat_interleave(2 * n)
    sample = torch.arange(n, device=device).repeat_interleave(2).repeat(len(channels))
    sign = torch.tensor([-1.0, 1.0], device=device).repeat(n * len(channels))
    resolution = clip_model.visual.input_resolution
    features = []
    for start in range(0, len(index), settings.batch_size):
        batch = slice(start, start + settings.batch_size)
        flat = base[sample[batch]].clone()
        rows, ch = torch.arange(len(flat), device=device), index[batch]
        # reference: the channel set to its mean, then alpha * std added (float32, like its numpy arrays)
        flat[rows, ch] = mean[ch] + (sign[batch] * settings.alpha) * std[ch]
        images = renderer.render(list(flat.split(generator.style_dims, dim=1)))
        # the reference embeds uint8 images: (x + 1) * 127.5, clamped, truncated
        images = ((images + 1) * 127.5).clamp(0, 255).to(torch.uint8).float() / 127.5 - 1
        features.append(image_features(clip_model, clip_preprocess(images, resolution)))
    f = torch.cat(features).double().reshape(len(channels), n, 2, -1)
    f = f / f.norm(dim=-1, keepdim=True)
    diff = _unit(f[:, :, 1] - f[:, :, 0])
    return _unit(diff.mean(dim=1)).float().cpu().numpy()


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Normalize the last axis; a zero vector (a channel that changes nothing) stays zero instead of NaN."""
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(1e-30), torch.zeros_like(x))


# --- partial directory and files --------------------------------------------------------------------------

def _open_partial(partial: Path, meta: dict) -> Path:
    """The resume directory for exactly these models and settings; a foreign one is discarded."""
    config = partial / "config.json"
    if partial.is_dir():
        try:
            same = json.loads(config.read_text()) == meta
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    for tmp in partial.glob("*.tmp"):  # left by a killed writer
        tmp.unlink()
    if not config.is_file():
        _atomic_write(config, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return partial


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_npz(f, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed zip timestamps, so equal arrays give byte-identical files (and sha256s)."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def _fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a model's weights: a partial result is reused only with the very same models."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _check_settings(s: RelevanceSettings) -> None:
    problems = [msg for bad, msg in (
        (s.n_images < 1, "n_images must be >= 1"), (s.n_stats < s.n_images, "n_stats must be >= n_images"),
        (s.chunk_channels < 1, "chunk_channels must be >= 1"), (s.batch_size < 1, "batch_size must be >= 1"),
        (not s.alpha > 0, "alpha must be > 0"), (not 0 < s.truncation <= 1, "truncation must be in (0, 1]"),
    ) if bad]
    if problems:
        raise PipelineError(INVALID_PARAMETER, "; ".join(problems))


# --- loading ----------------------------------------------------------------------------------------------

def load_relevance(path: str | Path, stats: str | Path | None = None) -> Relevance:
    """Read a relevance file: ours (``.npz`` from ``precompute_relevance``) or the official StyleCLIP pair,
    given as their directory or as the ``fs3.npy`` path, with the style statistics ``stats`` (the bundle's
    ``relevance_stats`` file; default: the one beside it, ``STATS_NAMES`` in order)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".npy":
        return load_official_relevance(path / "fs3.npy" if path.is_dir() else path,
                                       Path(stats) if stats else None)
    if not path.is_file():
        raise PipelineError(MODEL_MISSING, f"relevance file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.get("meta", "{}")))
        fs3, std = arrays["fs3"], arrays["style_std"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise PipelineError(MODEL_INVALID, f"{path} is not a relevance file: {exc}") from exc
    mean = arrays.get("style_mean")
    return _relevance(path, fs3, std, mean, meta)


def load_official_relevance(fs3_path: Path, mean_std_path: Path | None = None) -> Relevance:
    """StyleCLIP's published ``fs3.npy [6048, 512]`` with the style statistics beside it (``S_mean_std``, or
    the ``style_stats.npz`` that ``compute-style-stats`` writes; see ``load_style_stats``)."""
    if mean_std_path is None:
        mean_std_path = next((p for p in (fs3_path.with_name(n) for n in STATS_NAMES) if p.is_file()),
                             fs3_path.with_name(STATS_NAMES[0]))
    for p in (fs3_path, mean_std_path):
        if not p.is_file():
            raise PipelineError(MODEL_MISSING, f"relevance file not found: {p}")
    fs3 = load_relevance_matrix(fs3_path)
    mean, std = load_style_stats(mean_std_path)
    return _relevance(fs3_path, fs3, std, mean, {"format": "styleclip-official"})


def _relevance(source: Path, fs3, std, mean, meta: dict) -> Relevance:
    fs3 = np.asarray(fs3, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32).reshape(-1)
    if fs3.ndim != 2 or not np.all(np.isfinite(fs3)) or not np.all(np.isfinite(std)):
        raise PipelineError(MODEL_INVALID, f"{source}: fs3 must be a finite [channels, D] matrix, style_std finite")
    mean_t = torch.from_numpy(np.asarray(mean, dtype=np.float32).reshape(-1)) if mean is not None else None
    return Relevance(torch.from_numpy(fs3), torch.from_numpy(std), mean_t, meta)
