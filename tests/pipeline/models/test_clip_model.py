"""CLIP loading (TorchScript archive and state dict), features, truncation and preprocessing, on a tiny CLIP."""

from __future__ import annotations

import clip
import numpy as np
import pytest
import torch
from clip.model import CLIP
from PIL import Image

from pipeline.models.clip_model import (
    clip_preprocess,
    image_features,
    load_clip,
    save_clip_archive,
    text_features,
    tokenize,
)
from pipeline.errors import PipelineError


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    # embed_dim, image_resolution, vision_layers, vision_width, patch, context, vocab, width, heads, layers
    return CLIP(32, 32, 1, 64, 16, 77, 49408, 64, 1, 1).float().eval()


@pytest.fixture(scope="module")
def model() -> CLIP:
    return tiny_clip()


TEXTS = ["a face", "a photo of the hard to see smiling face with blue hair.", "x"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_archive_round_trip_is_exact(model, tmp_path):
    path = tmp_path / "clip.pt"
    save_clip_archive(model, path)
    archive = torch.jit.load(str(path))  # a real TorchScript archive, like the official file
    assert {"input_resolution", "context_length", "vocab_size"} <= set(archive.state_dict())
    loaded = load_clip(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.visual.input_resolution == 32 and loaded.context_length == 77
    assert torch.equal(text_features(loaded, TEXTS), text_features(model, TEXTS))


def test_state_dict_float16_loads_as_float32(model, tmp_path):
    path = tmp_path / "clip_sd.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    loaded = load_clip(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert not loaded.training
    ref = model.state_dict()["token_embedding.weight"].half().float()
    assert torch.equal(loaded.state_dict()["token_embedding.weight"], ref)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 10, b"PK\x03\x04garbage"])
def test_garbage_is_model_invalid(tmp_path, content):
    path = tmp_path / "clip.pt"
    path.write_bytes(content)
    with pytest.raises(PipelineError) as err:
        load_clip(path)
    assert err.value.code == "model_invalid" and str(path) in err.value.message


def test_wrong_state_dict_is_model_invalid(model, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(PipelineError) as err:
        load_clip(path)
    assert err.value.code == "model_invalid"
    state = dict(model.state_dict())
    del state["ln_final.bias"]
    torch.save(state, path)
    with pytest.raises(PipelineError, match="ln_final.bias"):
        load_clip(path)


def test_missing_file_is_model_missing(tmp_path):
    with pytest.raises(PipelineError) as err:
        load_clip(tmp_path / "nope.pt")
    assert err.value.code == "model_missing"


def test_truncated_tokens_give_full_context_features(model):
    full = model.encode_text(clip.tokenize(TEXTS)).float()
    fast = text_features(model, TEXTS, batch_size=2)  # two batches with different real lengths
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)


def test_too_long_text_is_invalid_parameter(model):
    with pytest.raises(PipelineError) as err:
        text_features(model, ["face " * 100])
    assert err.value.code == "invalid_parameter"
    assert tokenize(model, ["a face"]).shape == (1, 77)


def test_preprocess_matches_clip_pil_transform():
    rng = np.random.default_rng(0)
    # smooth content, so the difference measures the transform, not aliasing of noise
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    pil = Image.fromarray(small).resize((80, 60), Image.BILINEAR)
    ref = clip.clip._transform(32)(pil)[None]
    x = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = clip_preprocess(x, 32)
    assert ours.shape == (1, 3, 32, 32)
    assert (ours - ref).abs().mean() < 0.02


def test_preprocess_is_differentiable_and_features_match_encode_image(model):
    x = torch.randn(2, 3, 48, 40, requires_grad=True)
    pixels = clip_preprocess(x, model.visual.input_resolution)
    feats = image_features(model, pixels)
    assert feats.shape == (2, 32)
    torch.testing.assert_close(feats, model.encode_image(pixels), rtol=0, atol=0)
    feats.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
