"""Relevance precompute on tiny models: statistics and one fs3 row against StyleCLIP's procedure written out,
byte-identical resume after a real SIGKILL, and the two file formats."""

from __future__ import annotations

import hashlib
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from clip.model import CLIP

from pipeline.edit.relevance import load_relevance, precompute_relevance
from pipeline.errors import PipelineError
from pipeline.models.clip_model import clip_preprocess
from pipeline.models.stylegan2 import Generator, load_generator, save_generator

REPO = Path(__file__).resolve().parents[3]
SETTINGS = dict(n_images=2, chunk_channels=4, seed=3, n_stats=96, batch_size=8)


def tiny_models(seed: int = 0) -> tuple[Generator, CLIP]:
    torch.manual_seed(seed)
    g = Generator(16, style_dim=32, n_mlp=2, channels={4: 8, 8: 8, 16: 4}).eval()
    m = CLIP(32, 32, 1, 64, 16, 77, 49408, 64, 1, 1).float().eval()
    return g, m


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    g, m = tiny_models()
    folder = tmp_path_factory.mktemp("models")
    save_generator(folder / "g.pt", g)
    torch.save(m.state_dict(), folder / "clip.pt")
    return g, m, folder


@pytest.fixture(scope="module")
def reference_file(models, tmp_path_factory):
    g, m, _ = models
    return precompute_relevance(g, m, tmp_path_factory.mktemp("ref") / "rel.npz", progress=False, **SETTINGS)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sampled_styles(g, n, seed, psi=0.7, cutoff=8):
    """StyleCLIP ``GenerateS``: z from RandomState(seed), truncation on the first W+ rows."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(n, g.style_dim).astype(np.float32))
    with torch.no_grad():
        w = g.mapping(z)
        avg = g.mean_latent(4096, torch.Generator().manual_seed(seed))
        wplus = w[:, None].repeat(1, g.n_latent, 1)
        wplus[:, :cutoff] = avg[:, None] + psi * (wplus[:, :cutoff] - avg[:, None])
        return torch.cat(g.styles(wplus), dim=1).double().numpy()


def test_file_contents_and_statistics(models, reference_file):
    g, m, _ = models
    rel = load_relevance(reference_file)
    n_conv = sum(d for d, rgb in zip(g.style_dims, g.style_is_torgb, strict=True) if not rgb)
    assert rel.fs3.shape == (n_conv, 32) and rel.style_std.shape == (sum(g.style_dims),)
    norms = rel.fs3.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    styles = sampled_styles(g, SETTINGS["n_stats"], SETTINGS["seed"])
    np.testing.assert_allclose(rel.style_std.numpy(), styles.std(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rel.style_mean.numpy(), styles.mean(axis=0), rtol=1e-4, atol=1e-5)
    assert rel.meta["n_images"] == 2 and rel.meta["seed"] == 3 and rel.meta["style_dims"] == g.style_dims
    assert not reference_file.with_suffix(".partial").exists()


def test_one_row_follows_styleclip_single_channel(models, reference_file):
    """``SingleChannel.py`` for one channel: set it to its mean, ±5 std, uint8 images, CLIP, ``GetFs``."""
    g, m, _ = models
    rel = load_relevance(reference_file)
    layer = 3  # convs.1
    channel = 5
    flat_index = sum(g.style_dims[:layer]) + channel
    row = sum(d for d, rgb in zip(g.style_dims[:layer], g.style_is_torgb[:layer], strict=True) if not rgb) + channel
    styles = sampled_styles(g, SETTINGS["n_stats"], SETTINGS["seed"])
    base = torch.from_numpy(styles[:SETTINGS["n_images"]]).float()
    feats = []
    with torch.no_grad():
        for sign in (-1, 1):
            s = base.clone()
            s[:, flat_index] = rel.style_mean[flat_index] + sign * 5 * rel.style_std[flat_index]
            img = g.synthesize(list(s.split(g.style_dims, dim=1)))
            img = ((img + 1) * 127.5).clamp(0, 255).to(torch.uint8).float() / 127.5 - 1
            feats.append(m.encode_image(clip_preprocess(img, 32)).double().numpy())
    f = np.stack(feats, axis=1)                                         # [N, 2, D]
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    d = f[:, 1] - f[:, 0]
    d = (d / np.linalg.norm(d, axis=-1, keepdims=True)).mean(axis=0)
    np.testing.assert_allclose(rel.fs3[row].numpy(), d / np.linalg.norm(d), atol=1e-4)


KILLED_RUN = """
import sys, torch
from pipeline.models.clip_model import load_clip
from pipeline.edit.relevance import precompute_relevance
from pipeline.models.stylegan2 import load_generator
folder = sys.argv[1]
g = load_generator(folder + "/g.pt", impl="{impl}")
m = load_clip(folder + "/clip.pt")
precompute_relevance(g, m, sys.argv[2], progress=False, **{settings})
"""


def test_resume_after_sigkill_gives_the_same_bytes(models, reference_file, tmp_path):
    g, m, folder = models
    out = tmp_path / "rel.npz"
    partial = out.with_suffix(".partial")
    code = KILLED_RUN.format(impl=g.impl, settings=SETTINGS)
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(out)], cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while not list(partial.glob("chunk_*.npy")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    done = {p.name for p in partial.glob("chunk_*.npy")}
    assert done and (partial / "stats.npz").is_file()

    resumed = precompute_relevance(load_generator(folder / "g.pt", impl=g.impl), m, out, progress=False,
                                   **SETTINGS)
    assert sha(resumed) == sha(reference_file)
    assert not partial.exists()


def test_foreign_partial_is_discarded(models, reference_file, tmp_path):
    g, m, _ = models
    out = tmp_path / "rel.npz"
    partial = out.with_suffix(".partial")
    partial.mkdir()
    (partial / "config.json").write_text('{"seed": 99}')
    np.save(partial / "chunk_0000000.npy", np.full((4, 32), 7, dtype=np.float32))
    precompute_relevance(g, m, out, progress=False, **SETTINGS)
    assert sha(out) == sha(reference_file)


def test_bad_settings_are_invalid_parameter(models, tmp_path):
    g, m, _ = models
    with pytest.raises(PipelineError) as err:
        precompute_relevance(g, m, tmp_path / "r.npz", n_images=0, progress=False)
    assert err.value.code == "invalid_parameter"


def test_official_styleclip_files(tmp_path):
    rng = np.random.default_rng(0)
    dims = [8, 8, 4]
    fs3 = rng.normal(size=(12, 16)).astype(np.float32)
    mean = [rng.normal(size=d) for d in dims]
    std = [rng.uniform(0.1, 1, size=d) for d in dims]
    np.save(tmp_path / "fs3.npy", fs3)
    with open(tmp_path / "S_mean_std", "wb") as f:
        pickle.dump([mean, std], f)
    rel = load_relevance(tmp_path)
    np.testing.assert_array_equal(rel.fs3.numpy(), fs3)
    np.testing.assert_allclose(rel.style_std.numpy(), np.concatenate(std), rtol=1e-6)
    np.testing.assert_allclose(rel.style_mean.numpy(), np.concatenate(mean), rtol=1e-6)
    # the torch port's variant (styles, mean, std), in the oldest protocol numpy arrays survive
    with open(tmp_path / "S_mean_std", "wb") as f:
        pickle.dump((None, mean, std), f, protocol=2)
    np.testing.assert_allclose(load_relevance(tmp_path / "fs3.npy").style_std.numpy(), np.concatenate(std), rtol=1e-6)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    np.save(tmp_path / "fs3.npy", np.zeros((2, 4), np.float32))
    with open(tmp_path / "S_mean_std", "wb") as f:
        pickle.dump([[_Evil()], [np.ones(2)]], f)
    with pytest.raises(PipelineError) as err:
        load_relevance(tmp_path)
    assert err.value.code == "model_invalid"


def test_bad_or_missing_files(tmp_path):
    with pytest.raises(PipelineError) as err:
        load_relevance(tmp_path / "none.npz")
    assert err.value.code == "model_missing"
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(PipelineError) as err:
        load_relevance(tmp_path / "bad.npz")
    assert err.value.code == "model_invalid"
    np.savez(tmp_path / "nan.npz", fs3=np.full((2, 3), np.nan, np.float32), style_std=np.ones(4, np.float32))
    with pytest.raises(PipelineError) as err:
        load_relevance(tmp_path / "nan.npz")
    assert err.value.code == "model_invalid"
