"""Per-channel style mean and std of a generator, computed the way StyleCLIP computes its ``S_mean_std``.

StyleCLIP's ``global_torch/manipulate.py`` (``GenerateS`` then ``GetCodeMS``): 100,000 z drawn with
``np.random.RandomState(5).randn``, mapped to W with truncation 0.7 on the first 8 W+ rows, turned into the style
vector of every modulated layer (toRGB included), and per channel the mean and the population std (``np.std``).
No image is synthesized, so this takes seconds to a minute on a CPU; the global directions need the std to scale
each channel's step (``pipeline/edit/directions.py``), which is why a bundle cannot do without it and why ``download``
computes it when no source of the published file answers.

File: ``style_stats.npz`` with ``style_mean``, ``style_std`` (float32, all layers concatenated in execution
order) and ``meta`` (JSON: samples, seed, truncation, per-layer dims, the generator's sha256), read by
``pipeline.weights.relevance_files.load_style_stats`` like StyleCLIP's pickle.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.weights.bundle import HASH_COMPUTED, ModelFile, cached_sha256

FILE = "style_stats.npz"
DEFAULT_SAMPLES = 100_000   # StyleCLIP's num_img
DEFAULT_SEED = 5            # StyleCLIP's GenerateS seed
TRUNCATION = 0.7
TRUNCATION_CUTOFF = 8
BATCH = 2048  # fixed: batch composition decides the float rounding, so it is part of the result


def sample_styles(generator, n: int, seed: int, truncation: float = TRUNCATION, cutoff: int = TRUNCATION_CUTOFF,
                  device: str | torch.device = "cpu") -> Iterator[torch.Tensor]:
    """Yield the flat style vectors ``[b, total]`` of ``n`` truncated samples, batch by batch (z drawn as the
    reference draws it: ``RandomState(seed).randn``; truncation towards the checkpoint's ``latent_avg``)."""
    rng = np.random.RandomState(seed)
    w_avg = generator.latent_avg if generator.latent_avg.numel() else \
        generator.mean_latent(4096, torch.Generator().manual_seed(seed))
    w_avg = w_avg.reshape(1, -1).to(device)
    cutoff = min(cutoff, generator.n_latent)
    for start in range(0, n, BATCH):
        b = min(BATCH, n - start)
        z = torch.from_numpy(rng.randn(b, generator.style_dim).astype(np.float32)).to(device)
        w = generator.mapping(z)
        wplus = w[:, None, :].repeat(1, generator.n_latent, 1)
        wplus[:, :cutoff] = w_avg[:, None] + truncation * (wplus[:, :cutoff] - w_avg[:, None])
        yield torch.cat(generator.styles(wplus), dim=1)


def style_mean_std(generator, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
                   device: str | torch.device = "cpu", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std (float64) over ``samples`` styles, merged batch by batch (Chan)."""
    if samples < 2:
        raise ValueError(f"samples must be at least 2, got {samples}")
    count, mean, m2 = 0, None, None
    bar = tqdm(total=samples, unit="z", desc="style stats", disable=not progress, dynamic_ncols=True)
    with torch.inference_mode(), bar:
        for batch in sample_styles(generator, samples, seed, device=device):
            x = batch.double().cpu().numpy()
            b_mean = x.mean(axis=0)
            b_m2 = ((x - b_mean) ** 2).sum(axis=0)
            if mean is None:
                count, mean, m2 = len(x), b_mean, b_m2
            else:
                delta, total = b_mean - mean, count + len(x)
                mean = mean + delta * len(x) / total
                m2 = m2 + b_m2 + delta ** 2 * count * len(x) / total
                count = total
            bar.update(len(x))
    return mean, np.sqrt(m2 / count)


def write_style_stats(path: Path, mean: np.ndarray, std: np.ndarray, meta: dict) -> None:
    """The ``.npz`` (fixed zip timestamps: equal numbers give equal bytes), written atomically."""
    path = Path(path)
    arrays = {"style_mean": np.asarray(mean, np.float32), "style_std": np.asarray(std, np.float32),
              "meta": np.array(json.dumps(meta))}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, array in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, array, allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compute_style_stats_file(generator_path: Path, directory: Path, samples: int = DEFAULT_SAMPLES,
                             seed: int = DEFAULT_SEED, device: str = "cpu", progress: bool = False,
                             license: str = "") -> ModelFile:
    """Compute the statistics of the generator in ``generator_path`` into ``directory/style_stats.npz``; the
    manifest entry that describes it (``hash: computed``, with samples and seed)."""
    from pipeline.models.stylegan2 import load_generator

    generator = load_generator(generator_path, device, impl="ref").eval().requires_grad_(False)
    mean, std = style_mean_std(generator, samples, seed, device, progress)
    generator_sha = cached_sha256(Path(generator_path), Path(generator_path).parent)
    computed = {"command": "python -m pipeline compute-style-stats", "samples": samples, "seed": seed,
                "truncation": TRUNCATION, "truncation_cutoff": TRUNCATION_CUTOFF,
                "generator_sha256": generator_sha}
    meta = {"format": "style-stats/1", **computed, "style_dims": list(generator.style_dims),
            "style_is_torgb": list(generator.style_is_torgb)}
    path = Path(directory) / FILE
    write_style_stats(path, mean, std, meta)
    return ModelFile(file=FILE, url=None, sha256=cached_sha256(path, Path(directory)), bytes=path.stat().st_size,
                     license=license or "computed from the bundle's generator: the generator's license applies",
                     source=f"computed from {Path(generator_path).name} as StyleCLIP computes S_mean_std "
                            f"({samples:,} samples, seed {seed}, truncation {TRUNCATION})",
                     hash=HASH_COMPUTED, computed=computed)
