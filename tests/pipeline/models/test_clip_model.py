"""CLIP loading (TorchScript archive and state dict), features (through the prefix trie and padded), and
preprocessing, on tiny CLIPs (and the text tower at ViT-B/32 size once)."""

from __future__ import annotations

import copy

import clip
import numpy as np
import pytest
import torch
from clip.model import CLIP, convert_weights
from PIL import Image

from bench.models import VIT_B_32
from pipeline.edit.directions import IMAGENET_TEMPLATES
from pipeline.errors import PipelineError
from pipeline.models import clip_text
from pipeline.models.clip_model import (
    _padded_text_features,
    clip_preprocess,
    image_features,
    load_clip,
    save_clip_archive,
    text_features,
    tokenize,
)
from pipeline.models.clip_text import (
    MAX_TRIE_NODES,
    AttentionBlocks,
    PrefixTrie,
    block_attention,
    cut_at_eot,
    trie_chunks,
)


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
    fast = _padded_text_features(model, TEXTS, batch_size=2)  # two batches with different real lengths
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)


# --- the prefix trie ---------------------------------------------------------------------------------------

def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def deep_model() -> CLIP:
    """Several blocks and heads (the tiny ``model`` has one of each: only the trie's last-block path)."""
    torch.manual_seed(1)
    return CLIP(32, 32, 1, 64, 16, 77, 49408, 64, 4, 3).float().eval()


AT_LIMIT = " ".join(["face"] * 75)  # SOT + 75 tokens + EOT: exactly the 77-token context
AT_LIMIT_TOO = " ".join(["face"] * 74 + ["beard"])  # shares 74 tokens of it


@pytest.mark.parametrize("texts", [
    ["a photo of a face", "a photo of a face with a beard", "a photo of the face", "a photo"],  # shared prefixes
    ["a face", "a bald face", "a face", "a face"],                                                 # duplicates
    ["a smiling face with blue hair"],                                                             # a single text
    ["x", "a photo of the hard to see smiling face with blue hair and a long black beard."],       # lengths
    [AT_LIMIT, "a face", AT_LIMIT_TOO],                                                              # the limit
    ["", "a face"],                                                                                # SOT, EOT only
], ids=["shared", "duplicates", "single", "lengths", "limit", "empty"])
def test_trie_features_equal_encode_text(deep_model, texts):
    tokens = clip.tokenize(texts)
    if AT_LIMIT in texts:
        assert max(map(len, cut_at_eot(tokens))) == 77
    reference = deep_model.encode_text(tokens).detach()  # the full 77-token padded batch, nothing cut
    features = text_features(deep_model, texts)
    assert features.shape == reference.shape and features.dtype == torch.float32
    assert relative_error(features, reference) <= 1e-5
    for i, text in enumerate(texts):  # identical texts share their EOT node: the very same row
        first = texts.index(text)
        assert torch.equal(features[i], features[first])


def test_trie_keeps_the_order_of_texts(deep_model):
    texts = ["a face with a beard", "a bald face", "a face"]
    forward = text_features(deep_model, texts)
    backward = text_features(deep_model, texts[::-1])
    assert relative_error(backward.flip(0), forward) <= 1e-6
    assert relative_error(forward[1], deep_model.encode_text(clip.tokenize(texts[1:2])).detach()[0]) <= 1e-5
    assert not torch.allclose(forward[0], forward[1])  # different texts: different rows, not a collapsed batch


def test_hand_made_trie():
    # SOT=1, EOT=9: [1 2 3 9], [1 2 4 9], [1 5 9], [1 2 3 9] again
    trie = PrefixTrie.build([[1, 2, 3, 9], [1, 2, 4, 9], [1, 5, 9], [1, 2, 3, 9]])
    #  node: 0:1 ─ 1:2 ─ 2:3 ─ 3:9
    #              └──── 4:4 ─ 5:9
    #        └── 6:5 ─ 7:9
    assert len(trie) == 8
    assert trie.tokens == [1, 2, 3, 9, 4, 9, 5, 9]
    assert trie.depths == [0, 1, 2, 3, 2, 3, 1, 2]
    assert trie.parents == [-1, 0, 1, 2, 1, 4, 0, 6]
    assert trie.ends == [3, 5, 7, 3]
    visible = trie.ancestor_mask()
    assert visible.dtype == torch.bool and visible.shape == (8, 8)
    paths = {3: [0, 1, 2, 3], 5: [0, 1, 4, 5], 7: [0, 6, 7], 4: [0, 1, 4], 0: [0]}
    for node, path in paths.items():
        assert visible[node].nonzero()[:, 0].tolist() == path
    assert int(visible.sum()) == sum(depth + 1 for depth in trie.depths)


def test_trie_nodes_are_in_preorder_whatever_the_input_order():
    trie = PrefixTrie.build([[1, 5, 9], [1, 2, 3, 9], [1, 2, 4, 9]])
    assert trie.tokens == [1, 2, 3, 9, 4, 9, 5, 9]  # the same trie as sorted input gives
    assert trie.ends == [7, 3, 5]                   # in the input's order
    for node, parent in enumerate(trie.parents):    # a subtree is the run of deeper nodes after its root
        if parent >= 0:
            assert all(trie.depths[between] > trie.depths[parent] for between in range(parent + 1, node))


@pytest.mark.parametrize("size", [1, 3, 64])
def test_block_attention_is_multihead_attention_with_the_ancestor_mask(size):
    torch.manual_seed(3)
    sequences = [[1, 2, 3, 9], [1, 2, 4, 9], [1, 5, 9], [1, 2, 3, 6, 7, 9], [8, 9]]  # two roots, too
    trie = PrefixTrie.build(sequences)
    visible = trie.ancestor_mask()
    attn = torch.nn.MultiheadAttention(16, 4).eval()
    nodes = torch.randn(len(trie), 16)
    dense = torch.zeros(len(trie), len(trie)).masked_fill_(~visible, float("-inf"))
    queries = torch.tensor([3, 5, 0, 11])  # any nodes, any order (the last block reads the EOT nodes)
    with torch.no_grad():
        expected = attn(nodes[queries, None], nodes[:, None], nodes[:, None], need_weights=False,
                        attn_mask=dense[queries])[0][:, 0]
        blocks = AttentionBlocks.build(visible, queries, torch.float32, size=size)
        got = block_attention(attn, nodes[queries], nodes, blocks)
        assert relative_error(got, expected) <= 1e-6
        every = AttentionBlocks.build(visible, torch.arange(len(trie)), torch.float32, size=size)
        expected = attn(nodes[:, None], nodes[:, None], nodes[:, None], need_weights=False, attn_mask=dense)[0][:, 0]
        assert relative_error(block_attention(attn, nodes, nodes, every), expected) <= 1e-6
    # each block holds exactly the nodes its queries see, and in preorder no more than its first node's root path
    # and the block itself
    for rows, keys, mask in zip(every.rows, every.keys, every.mask[:, 0], strict=True):
        real = keys[mask.isfinite().any(dim=0)]
        assert set(real.tolist()) == set(visible[rows].any(dim=0).nonzero()[:, 0].tolist())
        assert len(real) <= trie.depths[int(rows[0])] + size


def test_cut_at_eot_reads_each_prompt_through_its_eot(model):
    sequences = cut_at_eot(tokenize(model, ["a face", ""]))
    sot, eot = clip.tokenize([""])[0, :2].tolist()
    assert sequences[1] == [sot, eot]
    assert sequences[0][0] == sot and sequences[0][-1] == eot and len(sequences[0]) == 4


def test_trie_chunks_bound_the_nodes_and_cover_every_prompt():
    sequences = [[1, 2, 3, 9], [1, 2, 4, 9], [7, 9], [1, 2, 3, 9], [1, 5, 9], list(range(10, 20))]
    # sorted, prefixes shared: 0 and its duplicate 3 (4 nodes), 1 (+2 would be 6), 4 and 2 (3 + 2), 5 (10) alone
    groups = list(trie_chunks(sequences, max_nodes=5))
    assert groups == [[0, 3], [1], [4, 2], [5]]
    for group in groups:
        nodes = len(PrefixTrie.build([sequences[i] for i in group]))
        assert nodes <= 5 or len(group) == 1  # one sequence longer than the bound goes alone
    assert list(trie_chunks(sequences, max_nodes=100)) == [[0, 3, 1, 4, 2, 5]]
    assert list(trie_chunks([])) == []


def test_many_prompts_go_through_several_tries(deep_model, monkeypatch):
    monkeypatch.setattr(clip_text, "MAX_TRIE_NODES", 300)
    texts = ["a face with a beard", "a bald face", "a smiling face with blue hair", "a face"]
    prompts = [template.format(text) for text in texts for template in IMAGENET_TEMPLATES]
    assert len(list(trie_chunks(cut_at_eot(tokenize(deep_model, prompts))))) > 2
    features = text_features(deep_model, prompts)
    reference = _padded_text_features(deep_model, prompts, batch_size=100)
    assert relative_error(features, reference) <= 1e-5


def test_no_texts_and_no_grad(deep_model):
    assert text_features(deep_model, []).shape == (0, 32)
    assert any(p.requires_grad for p in deep_model.parameters())
    assert not text_features(deep_model, ["a face"]).requires_grad


def test_trie_in_float16(deep_model):
    half = copy.deepcopy(deep_model)
    convert_weights(half)  # CLIP's own float16 conversion (LayerNorms stay float32), as the official fp16 model
    assert half.dtype == torch.float16
    texts = ["a face", "a face with a beard", "a face"]
    reference = half.encode_text(clip.tokenize(texts)).detach().float()
    features = text_features(half, texts)
    assert features.dtype == torch.float32
    assert relative_error(features, reference) <= 5e-3  # float16 rounding of two different summation orders


def test_trie_at_vit_b32_text_size():
    """The text tower at the real size (12 blocks, 8 heads, width 512), vision kept tiny: a text's 79 prompts."""
    torch.manual_seed(2)
    sizes = {**VIT_B_32, "image_resolution": 32, "vision_layers": 1, "vision_width": 64, "vision_patch_size": 16}
    full = CLIP(**sizes).float().eval().requires_grad_(False)
    prompts = [template.format("a face with a beard") for template in IMAGENET_TEMPLATES]
    sequences = cut_at_eot(tokenize(full, prompts))
    assert len(PrefixTrie.build(sequences)) < MAX_TRIE_NODES  # one trie, as the service runs it
    features = text_features(full, prompts)
    assert relative_error(features, _padded_text_features(full, prompts)) <= 1e-5


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
