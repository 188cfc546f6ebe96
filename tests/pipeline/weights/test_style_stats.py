"""``compute-style-stats``: the style mean/std of a generator as StyleCLIP computes ``S_mean_std``, checked
against an independent numpy computation on the golden generator (its weights rebuilt by pipeline/golden);
both layouts of the official generator checkpoint load (full, and ``g_ema`` only)."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import MODEL_INVALID, PipelineError
from pipeline.models.checkpoints import load_state
from pipeline.models.stylegan2 import Generator, load_generator, save_generator
from pipeline.weights.bundle import Bundle, read_manifest
from pipeline.weights.relevance_files import load_style_stats
from tests.pipeline.images import golden_dir


def _leaky(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, 0.2 * x) * np.sqrt(2)


def _reference_stats(state: dict, layers: list[str], latent_avg: np.ndarray, samples: int, seed: int):
    """StyleCLIP's GenerateS + GetCodeMS written out in float64 numpy from the raw rosinality weights."""
    w_ = {k: v.double().numpy() for k, v in state.items()}
    z = np.random.RandomState(seed).randn(samples, 512)
    x = z / np.sqrt((z ** 2).mean(axis=1, keepdims=True) + 1e-8)
    for i in range(1, 9):  # EqualLinear(lr_mul=0.01) + fused leaky ReLU
        x = _leaky(x @ (w_[f"style.{i}.weight"] * 0.01 / np.sqrt(512)).T + w_[f"style.{i}.bias"] * 0.01)
    means, stds = [], []
    for name in layers:  # conv1, to_rgb1, convs.k, to_rgbs.j: which W+ row each reads
        if name.startswith("conv1."):
            row = 0
        elif name.startswith("to_rgb1."):
            row = 1
        elif name.startswith("convs."):
            row = int(name.split(".")[1]) + 1
        else:
            row = 2 * int(name.split(".")[1]) + 3
        w = latent_avg + 0.7 * (x - latent_avg) if row < 8 else x
        s = w @ (w_[f"{name}.weight"] / np.sqrt(512)).T + w_[f"{name}.bias"]
        means.append(s.mean(axis=0))
        stds.append(s.std(axis=0))
    return np.concatenate(means), np.concatenate(stds)


def test_matches_an_independent_computation_on_the_golden_generator(tmp_path):
    from pipeline.golden import Fixture

    directory = golden_dir()
    if not (directory / "meta.json").is_file():
        pytest.skip(f"golden fixtures not found in {directory} (set GOLDEN_DIR)")
    fixture = Fixture(directory, torch.device("cpu"))
    entry = fixture.meta["stylegan2_256"]
    cfg = entry["config"]
    generator = Generator(cfg["size"], cfg["style_dim"], cfg["n_mlp"], cfg["channel_multiplier"])
    state = fixture.weights("stylegan2_256", generator.state_dict())
    load_state(generator, state, "golden stylegan2_256")
    latent_avg = np.random.RandomState(1).randn(512) * 0.5
    save_generator(tmp_path / "g.pt", generator, torch.from_numpy(latent_avg).float())

    assert main(["compute-style-stats", "--bundle", str(tmp_path), "--generator", str(tmp_path / "g.pt"),
                 "--samples", "3000", "--quiet"]) == 0
    mean, std = load_style_stats(tmp_path / "style_stats.npz")
    ref_mean, ref_std = _reference_stats(state, entry["style_layers"], latent_avg.astype(np.float32), 3000, seed=5)
    assert mean.shape == ref_mean.shape == (sum(entry["style_dims"]),)
    for ours, ref in ((mean, ref_mean), (std, ref_std)):
        assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-4  # the golden vector tolerance
    # the seed is StyleCLIP's (5): another seed gives other numbers
    assert main(["compute-style-stats", "--bundle", str(tmp_path), "--generator", str(tmp_path / "g.pt"),
                 "--samples", "3000", "--seed", "6", "--quiet"]) == 0
    assert np.abs(load_style_stats(tmp_path / "style_stats.npz")[1] - ref_std).max() > 1e-3 * np.abs(ref_std).max()


def test_the_bundle_manifest_records_it_as_computed(tmp_path, dev_bundle):
    directory = tmp_path / "b"
    shutil.copytree(dev_bundle.dir, directory)
    assert main(["compute-style-stats", "--bundle", str(directory), "--samples", "256", "--seed", "3", "--quiet"]) == 0
    entry = read_manifest(directory).models["relevance_stats"]
    assert entry.file == "style_stats.npz" and entry.hash == "computed" and entry.url is None
    assert (entry.computed["samples"], entry.computed["seed"]) == (256, 3)
    assert entry.computed["generator_sha256"] == dev_bundle.manifest.models["generator"].sha256
    Bundle.load(directory, verify=True)


def test_styleclips_pickle_and_our_file_read_alike(tmp_path):
    mean, std = [np.arange(4, dtype=np.float32), np.ones(2, np.float32)], [np.full(4, 2, np.float32), np.ones(2, np.float32)]
    (tmp_path / "S_mean_std").write_bytes(pickle.dumps([mean, std], protocol=2))
    got_mean, got_std = load_style_stats(tmp_path / "S_mean_std")
    np.testing.assert_array_equal(got_mean, np.concatenate(mean))
    np.testing.assert_array_equal(got_std, np.concatenate(std))
    (tmp_path / "junk").write_bytes(b"\x80\x02junk")
    with pytest.raises(PipelineError) as err:
        load_style_stats(tmp_path / "junk")
    assert err.value.code == MODEL_INVALID


def test_full_and_g_ema_only_generator_checkpoints_both_load(tmp_path):
    from pipeline.weights.dev_bundle import dev_generator

    torch.manual_seed(0)
    g = dev_generator(32)
    state = {k: v.clone() for k, v in g.state_dict().items()}
    latent_avg = torch.randn(g.style_dim)
    # what the 381 MB copy holds (convert_weight.py with --gen --disc) and what the 133 MB copies hold
    torch.save({"g": state, "d": {"convs.0.0.weight": torch.randn(8, 3, 1, 1)}, "g_ema": state,
                "latent_avg": latent_avg}, tmp_path / "full.pt")
    torch.save({"g_ema": state, "latent_avg": latent_avg}, tmp_path / "g_ema.pt")
    torch.save({"g_ema": state}, tmp_path / "bare.pt")
    w = torch.randn(2, g.style_dim)
    with torch.no_grad():
        expected = g.styles(w)
        for name in ("full.pt", "g_ema.pt", "bare.pt"):
            loaded = load_generator(tmp_path / name, impl="ref")
            for a, b in zip(loaded.styles(w), expected, strict=True):
                torch.testing.assert_close(a, b)
    assert torch.equal(load_generator(tmp_path / "g_ema.pt").latent_avg, latent_avg)
    assert load_generator(tmp_path / "bare.pt").latent_avg.numel() == 0
    torch.save(state, tmp_path / "state_dict_only.pt")  # not a rosinality checkpoint: refused by name
    with pytest.raises(PipelineError) as err:
        load_generator(tmp_path / "state_dict_only.pt")
    assert err.value.code == MODEL_INVALID and "g_ema" in err.value.message
