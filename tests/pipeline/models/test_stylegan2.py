"""The generator: both impls agree (the reference and the batched path), style space round-trips, checkpoints
round-trip and bad ones are refused, and the golden fixtures (256 by default, 1024 marked slow) match the
reference implementation on every render path (the fast renderers: tests/pipeline/render/test_renderer.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipeline.errors import MODEL_INVALID, MODEL_MISSING, PipelineError
from pipeline.golden import Fixture
from pipeline.golden import stylegan2 as golden
from pipeline.models.stylegan2 import Generator, load_generator, save_generator

GOLDEN = Path(os.environ.get("GOLDEN_DIR", Path(__file__).resolve().parents[4] / "shared" / "golden"))
needs_golden = pytest.mark.skipif(not (GOLDEN / "meta.json").is_file(), reason=f"no golden fixture at {GOLDEN}")
TINY = {"size": 32, "style_dim": 16, "n_mlp": 2, "channels": {4: 16, 8: 16, 16: 8, 32: 8}}


@pytest.fixture(scope="module")
def tiny() -> Generator:
    torch.manual_seed(0)
    g = Generator(**TINY).eval()
    with torch.no_grad():  # a non-zero noise strength, so the noise buffers matter
        for conv in [g.conv1, *g.convs]:
            conv.noise.weight.fill_(0.3)
    return g


def wplus_for(g: Generator, batch: int, seed: int) -> torch.Tensor:
    z = torch.randn(batch, g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(seed))
    return g.mapping(z.flatten(0, 1)).view(batch, g.n_latent, g.style_dim)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max() / b.abs().max())


def test_style_space_metadata(tiny):
    assert tiny.n_latent == 8 and len(tiny.style_layer_names) == 11
    assert tiny.style_layer_names[:5] == ["conv1.conv.modulation", "to_rgb1.conv.modulation",
                                          "convs.0.conv.modulation", "convs.1.conv.modulation",
                                          "to_rgbs.0.conv.modulation"]
    assert tiny.style_dims == [16, 16, 16, 16, 16, 16, 8, 8, 8, 8, 8]
    assert tiny.style_is_torgb == [False, True] + [False, False, True] * 3
    assert tiny.style_wplus_index == [0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7]


@torch.inference_mode()
@pytest.mark.parametrize("impl", ["ref", "fast"])
def test_synthesize_of_styles_equals_forward(tiny, impl):
    tiny.impl = impl
    wplus = wplus_for(tiny, 2, seed=1)
    styles = tiny.styles(wplus)
    assert [tuple(s.shape) for s in styles] == [(2, d) for d in tiny.style_dims]
    assert torch.equal(tiny.synthesize(styles), tiny(wplus))
    # one w for every layer is the same as that w repeated
    w = wplus[:, 0]
    assert torch.equal(tiny(w), tiny(w[:, None].expand(-1, tiny.n_latent, -1)))


@torch.inference_mode()
def test_fast_equals_ref(tiny):
    wplus = wplus_for(tiny, 3, seed=2)
    out = {}
    for impl in ("ref", "fast"):
        tiny.impl = impl
        out[impl] = (tiny(wplus), tiny(wplus[:1]), tiny.mapping(wplus[:, 0]))
    for fast, ref in zip(out["fast"], out["ref"], strict=False):
        assert rel_err(fast, ref) < 1e-5


@torch.inference_mode()
@pytest.mark.parametrize("impl", ["ref", "fast"])
def test_a_batch_of_edited_styles_equals_one_at_a_time(tiny, impl):
    tiny.impl = impl
    styles = tiny.styles(wplus_for(tiny, 1, seed=3))
    direction = [torch.randn(s.shape, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(styles)]
    alphas = [-2.0, 0.0, 3.0]
    batch = [torch.cat([s + a * d for a in alphas]) for s, d in zip(styles, direction, strict=False)]
    images = tiny.synthesize(batch)
    assert images.shape == (3, 3, 32, 32)
    for i, a in enumerate(alphas):
        single = tiny.synthesize([s + a * d for s, d in zip(styles, direction, strict=False)])
        assert rel_err(images[i:i + 1], single) < 1e-5
    assert rel_err(images[1:2], tiny.synthesize(styles)) < 1e-5
    assert rel_err(images[0], images[2]) > 1e-2  # the edit does change the image


@torch.inference_mode()
def test_synthesize_refuses_wrong_styles(tiny):
    styles = tiny.styles(wplus_for(tiny, 1, seed=4))
    with pytest.raises(ValueError, match="expected 11"):
        tiny.synthesize(styles[:-1])
    with pytest.raises(ValueError, match="convs.0"):
        tiny.synthesize(styles[:2] + [styles[2][:, :3]] + styles[3:])


@torch.inference_mode()
def test_checkpoint_round_trip(tiny, tmp_path):
    path = tmp_path / "g.pt"
    latent_avg = torch.randn(TINY["style_dim"])
    save_generator(path, tiny, latent_avg=latent_avg)
    loaded = load_generator(path, impl="ref")
    assert (loaded.size, loaded.style_dim, loaded.n_mlp, loaded.channels) == \
        (TINY["size"], TINY["style_dim"], TINY["n_mlp"], TINY["channels"])
    assert torch.equal(loaded.latent_avg, latent_avg)
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    tiny.impl = "ref"
    wplus = wplus_for(tiny, 1, seed=5)
    assert torch.equal(loaded(wplus), tiny(wplus))


def saved_state(tiny: Generator, tmp_path: Path, edit) -> Path:
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    edit(state)
    path = tmp_path / "bad.pt"
    torch.save({"g_ema": state, "latent_avg": torch.zeros(TINY["style_dim"])}, path)
    return path


@pytest.mark.parametrize(("edit", "named"), [
    (lambda s: s.pop("convs.1.noise.weight"), "missing keys: convs.1.noise.weight"),
    (lambda s: s.update({"convs.3.conv.weight": torch.zeros(1, 8, 7, 3, 3)}), "convs.3.conv.weight [1, 8, 7, 3, 3]"),
    (lambda s: s.update({"to_rgbs.1.conv.modulation.weight": torch.zeros(8, 15)}),
     "to_rgbs.1.conv.modulation.weight [8, 15] (expected [8, 16])"),
    (lambda s: s.update({"extra.weight": torch.zeros(1)}), "unexpected keys: extra.weight"),
    (lambda s: s.pop("input.input"), "input.input"),
])
def test_a_mismatched_checkpoint_is_model_invalid_naming_the_key(tiny, tmp_path, edit, named):
    path = saved_state(tiny, tmp_path, edit)
    with pytest.raises(PipelineError) as err:
        load_generator(path)
    assert err.value.code == MODEL_INVALID
    assert named in err.value.message and str(path) in err.value.message


def test_unreadable_or_absent_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    no_g_ema = tmp_path / "no_g_ema.pt"
    torch.save({"g": {}}, no_g_ema)
    for path in (garbage, no_g_ema):
        with pytest.raises(PipelineError) as err:
            load_generator(path)
        assert err.value.code == MODEL_INVALID and str(path) in err.value.message
    with pytest.raises(PipelineError) as err:
        load_generator(tmp_path / "absent.pt")
    assert err.value.code == MODEL_MISSING


def run_golden(assert_golden, name: str) -> None:
    if name not in golden.generator_entries(Fixture(GOLDEN)):
        pytest.skip(f"{GOLDEN} has no {name}")
    assert_golden("stylegan2", contains=name)


@needs_golden
def test_golden_256(assert_golden):
    run_golden(assert_golden, "stylegan2_256")


@needs_golden
@pytest.mark.slow
def test_golden_1024(assert_golden):
    run_golden(assert_golden, "stylegan2_1024")
