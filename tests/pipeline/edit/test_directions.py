"""Global-direction math: text direction (against StyleCLIP's formula), the cache, boundary and apply, and the
golden boundary fixture when it is present."""

from __future__ import annotations

import json
import os
from pathlib import Path

import clip
import numpy as np
import pytest
import torch
from clip.model import CLIP

from pipeline.edit.directions import (
    IMAGENET_TEMPLATES,
    MAX_CHANGES,
    Change,
    StyleDirection,
    TextDirectionCache,
    apply,
    check_changes,
    combine,
    style_direction,
    text_direction,
    text_embedding,
)
from pipeline.errors import PipelineError

GOLDEN = Path(os.environ.get("GOLDEN_DIR", Path(__file__).resolve().parents[4] / "shared" / "golden"))
needs_golden = pytest.mark.skipif(not (GOLDEN / "meta.json").is_file(), reason=f"no golden fixture at {GOLDEN}")


@pytest.fixture(scope="module")
def model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(32, 32, 1, 64, 16, 77, 49408, 64, 1, 1).float().eval()


def reference_dt(model, neutral, target, templates):
    """StyleCLIP ``zeroshot_classifier`` + ``GetDt`` written out, with full 77-token contexts."""
    def embed(text):
        f = model.encode_text(clip.tokenize([t.format(text) for t in templates]))
        f = f / f.norm(dim=-1, keepdim=True)
        f = f.mean(dim=0)
        return f / f.norm()
    with torch.no_grad():
        dt = (embed(target) - embed(neutral)).numpy()
    return dt / np.linalg.norm(dt)


def test_templates_are_styleclips_79():
    assert len(IMAGENET_TEMPLATES) == 79 == len(set(IMAGENET_TEMPLATES))
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert "a photo of many {}." not in IMAGENET_TEMPLATES


@needs_golden
def test_templates_equal_the_fixture():
    meta = json.loads((GOLDEN / "meta.json").read_text())
    assert list(IMAGENET_TEMPLATES) == meta["clip_text_direction"]["templates"]


def test_text_direction_matches_styleclip(model):
    templates = IMAGENET_TEMPLATES[:7]
    dt = text_direction(model, "face", "bald face", templates)
    assert dt.shape == (32,)
    assert abs(float(dt.norm()) - 1) < 1e-5
    np.testing.assert_allclose(dt.numpy(), reference_dt(model, "face", "bald face", templates), atol=1e-5)
    emb = text_embedding(model, "face", templates)
    assert abs(float(emb.norm()) - 1) < 1e-5


@pytest.mark.parametrize("neutral,target", [("face", "face"), ("", "bald face"), ("face", "   ")])
def test_degenerate_texts_are_invalid_parameter(model, neutral, target):
    with pytest.raises(PipelineError) as err:
        text_direction(model, neutral, target, IMAGENET_TEMPLATES[:2])
    assert err.value.code == "invalid_parameter"


def test_cache_memory_disk_and_key(model, tmp_path):
    templates = IMAGENET_TEMPLATES[:3]
    cache = TextDirectionCache(tmp_path, "clip-a", maxsize=1)
    dt = cache.get(model, "face", "bald face", templates)
    np.testing.assert_array_equal(dt.numpy(), text_direction(model, "face", "bald face", templates).numpy())
    assert len(list(tmp_path.glob("*.npy"))) == 1
    # a new process (new cache) reads the disk without touching the model
    fresh = TextDirectionCache(tmp_path, "clip-a")
    np.testing.assert_array_equal(fresh.get(None, "face", "bald face", templates).numpy(), dt.numpy())
    # what the direction depends on is in the key
    keys = {cache.key("face", "bald face", templates), cache.key("bald face", "face", templates),
            cache.key("face", "bald face", IMAGENET_TEMPLATES[:4]),
            TextDirectionCache(tmp_path, "clip-b").key("face", "bald face", templates)}
    assert len(keys) == 4
    # LRU of size 1: the second entry evicts the first from memory, the disk still has both
    cache.get(model, "face", "smiling face", templates)
    assert len(cache._memory) == 1 and len(list(tmp_path.glob("*.npy"))) == 2


def test_cache_recomputes_a_corrupt_file(model, tmp_path):
    templates = IMAGENET_TEMPLATES[:2]
    cache = TextDirectionCache(tmp_path, "clip-a")
    (tmp_path / f"{cache.key('face', 'old face', templates)}.npy").write_bytes(b"garbage")
    dt = cache.get(model, "face", "old face", templates)
    np.testing.assert_array_equal(dt.numpy(), text_direction(model, "face", "old face", templates).numpy())


def reference_boundary(fs3, dt, beta, std, dims, is_rgb):
    """StyleCLIP ``GetBoundary`` + ``SplitS(if_std=True)`` in numpy."""
    tmp = fs3 @ dt
    tmp[np.abs(tmp) < beta] = 0
    tmp = tmp / np.abs(tmp).max()
    out, start, std_start = [], 0, 0
    for d, rgb in zip(dims, is_rgb, strict=True):
        if rgb:
            out.append(np.zeros(d))
        else:
            out.append(tmp[start:start + d] * std[std_start:std_start + d])
            start += d
        std_start += d
    return np.concatenate(out), int((np.abs(fs3 @ dt) >= beta).sum())


def random_space(seed=0, dims=(8, 8, 6, 6, 6, 4), is_rgb=(False, True, False, False, True, False), d=16):
    rng = np.random.default_rng(seed)
    n_conv = sum(c for c, r in zip(dims, is_rgb, strict=True) if not r)
    fs3 = rng.normal(size=(n_conv, d)).astype(np.float32)
    fs3 /= np.linalg.norm(fs3, axis=1, keepdims=True)
    dt = rng.normal(size=d).astype(np.float32)
    dt /= np.linalg.norm(dt)
    std = rng.uniform(0.2, 2, size=sum(dims)).astype(np.float32)
    return fs3, dt, std, list(dims), list(is_rgb)


@pytest.mark.parametrize("beta", [0.05, 0.2, 0.4])
def test_style_direction_matches_styleclip(beta):
    fs3, dt, std, dims, is_rgb = random_space()
    direction = style_direction(torch.from_numpy(fs3), torch.from_numpy(dt), beta, torch.from_numpy(std),
                                dims, is_rgb)
    expected, kept = reference_boundary(fs3.astype(np.float64), dt.astype(np.float64), beta, std, dims, is_rgb)
    assert direction.channels_kept == kept
    assert [len(x) for x in direction.layers] == dims
    np.testing.assert_allclose(direction.flat().numpy(), expected, atol=1e-6)
    assert all(not x.any() for x, rgb in zip(direction.layers, is_rgb, strict=True) if rgb)
    # the strongest kept channel is exactly its std
    ratio = direction.flat().numpy() / std
    assert abs(np.abs(ratio).max() - 1) < 1e-6


def test_nothing_kept_is_empty_direction():
    fs3, dt, std, dims, is_rgb = random_space()
    with pytest.raises(PipelineError) as err:
        style_direction(torch.from_numpy(fs3), torch.from_numpy(dt), 0.999, torch.from_numpy(std), dims, is_rgb)
    assert err.value.code == "empty_direction" and "lower beta" in err.value.message


@pytest.mark.parametrize("beta", [0, 1, -0.1, float("nan"), float("inf"), "0.1", None, True])
def test_bad_beta_is_invalid_parameter(beta):
    fs3, dt, std, dims, is_rgb = random_space()
    with pytest.raises(PipelineError) as err:
        style_direction(torch.from_numpy(fs3), torch.from_numpy(dt), beta, torch.from_numpy(std), dims, is_rgb)
    assert err.value.code == "invalid_parameter"


def test_relevance_that_does_not_fit_is_model_invalid():
    fs3, dt, std, dims, is_rgb = random_space()
    with pytest.raises(PipelineError) as err:
        style_direction(torch.from_numpy(fs3[:-1]), torch.from_numpy(dt), 0.1, torch.from_numpy(std), dims, is_rgb)
    assert err.value.code == "model_invalid"
    with pytest.raises(PipelineError):
        style_direction(torch.from_numpy(fs3), torch.from_numpy(dt), 0.1, torch.from_numpy(std[:-1]), dims, is_rgb)


def test_apply_all_alphas_in_one_batch():
    layers = (torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0, 0.5]))
    styles = [torch.tensor([[0.1, 0.2]]), torch.tensor([[1.0, 2.0, 3.0]])]
    out = apply(styles, StyleDirection(layers, 3), [-2, 0, 2.5])
    assert [o.shape for o in out] == [(3, 2), (3, 3)]
    torch.testing.assert_close(out[0], torch.tensor([[-1.9, 4.2], [0.1, 0.2], [2.6, -4.8]]))
    torch.testing.assert_close(out[1][1], styles[1][0])
    torch.testing.assert_close(out[1][2], torch.tensor([1.0, 2.0, 4.25]))


@pytest.mark.parametrize("alphas", [[], [0.0] * 17, [10.5], [-11], [float("nan")], [float("inf")], ["1"], [None]])
def test_bad_alphas_are_invalid_parameter(alphas):
    with pytest.raises(PipelineError) as err:
        apply([torch.zeros(1, 2)], [torch.ones(2)], alphas)
    assert err.value.code == "invalid_parameter"


def test_alpha_limits_are_inclusive():
    out = apply([torch.zeros(1, 2)], [torch.ones(2)], [-10, 10] + [0.0] * 14)
    assert out[0].shape == (16, 2) and float(out[0][1, 0]) == 10


@needs_golden
def test_golden_boundaries():
    """The fast part of the golden check (no generator): every beta's boundary and edited styles."""
    meta = json.loads((GOLDEN / "meta.json").read_text())
    dims = meta["stylegan2_1024"]["style_dims"]
    is_rgb = ["to_rgb" in n for n in meta["stylegan2_1024"]["style_layers"]]
    with np.load(GOLDEN / "global_boundary.npz") as f:
        ref = {k: f[k] for k in f.files}
    styles = [s[None] for s in torch.from_numpy(ref["styles"]).split(dims)]
    for beta in ref["betas"]:
        name = f"beta_{float(beta):g}"
        direction = style_direction(torch.from_numpy(ref["fs3"]), torch.from_numpy(ref["dt"]), float(beta),
                                    torch.from_numpy(ref["code_std"]), dims, is_rgb)
        assert direction.channels_kept == meta["global_boundary"]["per_beta"][name]["channels_kept"]
        b = ref[f"{name}_boundary"]
        assert np.abs(direction.flat().numpy() - b).max() <= 1e-4 * np.abs(b).max()
        edited = torch.cat(apply(styles, direction, [float(a) for a in ref["alphas"]]), dim=1).numpy()
        e = ref[f"{name}_edited"]
        assert np.abs(edited - e).max() <= 1e-4 * np.abs(e).max()


@pytest.mark.slow
@needs_golden
def test_golden_clip_and_boundary_checks(assert_golden):
    """Full-size parity: CLIP ViT-B/32 features and text directions, and the 1024 edited image."""
    assert_golden("clip")
    assert_golden("boundary")


def test_cache_reuses_the_neutral_embedding(model, tmp_path):
    """A second target with the same neutral embeds only the new text; the result equals the direct one."""
    templates = IMAGENET_TEMPLATES[:5]
    cache = TextDirectionCache(None, "clip-a")
    cache.get(model, "face", "bald face", templates)
    assert len(cache._embeddings) == 2
    dt = cache.get(model, "face", "smiling face", templates)
    assert len(cache._embeddings) == 3
    direct = text_direction(model, "face", "smiling face", templates)
    torch.testing.assert_close(dt, direct, rtol=0, atol=1e-6)
    with pytest.raises(PipelineError):
        cache.get(model, "face", "face", templates)


def test_text_embeddings_are_kept_on_disk(model, tmp_path):
    """A new process reads a known text's embedding from the cache folder: CLIP embeds only the new target."""
    templates = IMAGENET_TEMPLATES[:4]
    TextDirectionCache(tmp_path, "clip-a").get(model, "face", "bald face", templates)
    fresh = TextDirectionCache(tmp_path, "clip-a")
    embedded = fresh.embeddings(None, ["face", "bald face"], templates)  # no model: both from disk
    torch.testing.assert_close(embedded["face"], text_embedding(model, "face", templates), rtol=0, atol=1e-6)
    assert len(list((tmp_path / "texts").glob("*.npy"))) == 2
    assert TextDirectionCache(tmp_path, "clip-b").embeddings(model, ["face"], templates)["face"].shape == (32,)
    assert len(list((tmp_path / "texts").glob("*.npy"))) == 3  # another model's embedding is its own


# --- several changes ---------------------------------------------------------------------------------------------

def two_directions(beta=0.1):
    fs3, dt, std, dims, is_rgb = random_space(seed=3)
    other = np.random.default_rng(4).normal(size=dt.shape).astype(np.float32)
    other /= np.linalg.norm(other)
    t = torch.from_numpy
    return [style_direction(t(fs3), t(d), beta, t(std), dims, is_rgb) for d in (dt, other)]


def test_one_change_of_weight_one_is_that_direction_bit_for_bit():
    first, _ = two_directions()
    combined = combine([first], [1.0])
    assert all(torch.equal(a, b) for a, b in zip(combined.layers, first.layers, strict=True))
    assert combined.channels_kept == first.channels_kept


def test_two_changes_are_the_sum_of_their_boundaries():
    first, second = two_directions()
    combined = combine([first, second], [1.0, 1.0])
    assert all(torch.equal(c, a + b) for c, a, b in zip(combined.layers, first.layers, second.layers, strict=True))
    weighted = combine([first, second], [0.5, -2.0])
    np.testing.assert_allclose(weighted.flat().numpy(), 0.5 * first.flat().numpy() - 2 * second.flat().numpy(),
                               atol=1e-7)
    moved = (first.flat() != 0) | (second.flat() != 0)
    assert combined.channels_kept == int(moved.sum()) > max(first.channels_kept, second.channels_kept)
    # the alphas scale the sum: one render of the sum, not two renders
    styles = [torch.ones(1, len(layer)) for layer in first.layers]
    out = apply(styles, combined, [2.0])
    assert all(torch.equal(o, s + 2.0 * layer) for o, s, layer in zip(out, styles, combined.layers, strict=True))


@pytest.mark.parametrize("changes", [
    [],
    [Change("a face", "a smiling face")] * (MAX_CHANGES + 1),
    [Change("", "a smiling face")],
    [Change("a face", "   ")],
    [Change("a face", "x" * 301)],
    [Change("a face", "a smiling face", 0)],
    [Change("a face", "a smiling face", 2.5)],
    [Change("a face", "a smiling face", float("nan"))],
    [Change("a face", "a smiling face", True)],
    [("a face", "a smiling face", 1.0)],
])
def test_bad_changes_are_invalid_parameter(changes):
    with pytest.raises(PipelineError) as err:
        check_changes(changes)
    assert err.value.code == "invalid_parameter"


def test_good_changes_pass():
    changes = [Change("a face", "a smiling face"), Change("a face", "an old face", -2.0)]
    assert check_changes(tuple(changes)) == changes


def test_prefetch_computes_once_and_get_waits_for_it(model, tmp_path, monkeypatch):
    """A direction prefetched on a thread is what get returns (computed once); its error is get's error."""
    import pipeline.edit.directions as directions

    templates = IMAGENET_TEMPLATES[:3]
    calls = []
    real = directions.text_embeddings
    monkeypatch.setattr(directions, "text_embeddings", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    cache = TextDirectionCache(tmp_path, "clip-a")
    future = cache.prefetch(model, "face", "bald face", templates)
    dt = cache.get(model, "face", "bald face", templates)
    np.testing.assert_array_equal(dt.numpy(), future.result().numpy())
    assert calls == [["bald face", "face"]]
    np.testing.assert_array_equal(dt.numpy(), text_direction(model, "face", "bald face", templates).numpy())
    assert cache.prefetch(None, "face", "bald face", templates).done()  # known: no thread, no model
    cache.prefetch(model, "face", "face", templates)
    with pytest.raises(PipelineError) as error:
        cache.get(model, "face", "face", templates)
    assert error.value.code == "invalid_parameter"
