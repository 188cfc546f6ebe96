"""StyleFeatureEditor: the networks load from the official layout (and refuse a mismatch naming the file and the
key), the generator renders up to a feature and from an injected one on every path, and the golden SFE fixture
matches the reference implementation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from pipeline.errors import MODEL_INVALID, PipelineError
from pipeline.models.sfe import (
    SFE,
    SFEConfig,
    feature_delta,
    infer_config,
    inverter_input,
    load_sfe,
    save_sfe,
)
from pipeline.models.stylegan2 import Generator
from pipeline.render.cuda import CudaRenderer

GOLDEN_SFE = Path(os.environ.get("GOLDEN_SFE_DIR", Path(__file__).resolve().parents[4] / "shared" / "golden-sfe"))
needs_golden_sfe = pytest.mark.skipif(not (GOLDEN_SFE / "meta.json").is_file(),
                                      reason=f"no golden SFE fixture at {GOLDEN_SFE}")
# a 128² generator (its 64² block feeds the phase-upsampling layer of the CPU renderer) and an SFE of its widths
CHANNELS = {4: 16, 8: 16, 16: 16, 32: 12, 64: 8, 128: 8}
TINY = SFEConfig(stem=4, stages=((4, 1), (8, 1), (8, 2), (16, 1)), n_styles=12, style_dim=16, feature_channels=8,
                 fuser_blocks=2, editor_blocks=2)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(1)
    g = Generator(128, style_dim=16, n_mlp=2, channels=CHANNELS).eval()
    with torch.no_grad():
        for conv in [g.conv1, *g.convs]:
            conv.noise.weight.fill_(0.3)
            conv.activate.bias.normal_(0, 0.1)
        g.latent_avg = g.mean_latent(64)[0]
    return g


@pytest.fixture(scope="module")
def sfe() -> SFE:
    torch.manual_seed(2)
    model = SFE(TINY).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def styles(generator) -> list[torch.Tensor]:
    with torch.no_grad():
        z = torch.randn(2, generator.style_dim, generator=torch.Generator().manual_seed(3))
        return generator.styles(generator.mapping(z))


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(4)) * 2 - 1


# --- the networks and their checkpoint ---------------------------------------------------------------------

def test_the_official_layout_is_the_default_model():
    """Every key and shape of ``sfe_editor_light.pt``'s state dict (701, from the fixture's layouts or, without
    it, the counts the reference gives)."""
    with torch.device("meta"):
        state = SFE().checkpoint_state()
    layout_file = GOLDEN_SFE / "layouts.json"
    if layout_file.is_file():
        expected = json.loads(layout_file.read_text())["sfe_editor_light"]
        assert {k: list(v.shape) for k, v in state.items()} == expected
    assert len(state) == 701
    assert sum(k.startswith("inverter.") for k in state) == 609 and sum(k.startswith("encoder.") for k in state) == 92
    assert infer_config(state, "layout") == SFEConfig()


@torch.inference_mode()
def test_shapes_and_the_third_stage_keeps_its_resolution(sfe, photo):
    codes, predicted = sfe.inverter.fs_backbone(photo)
    assert codes.shape == (2, TINY.n_styles, TINY.style_dim) and predicted.shape == (2, TINY.feature_channels, 64, 64)
    assert sfe.inverter.fs_backbone.block_3[0].conv2.stride == (1, 1)
    fused = sfe.inverter.fuser.merge(predicted, predicted)
    assert torch.equal(sfe.edit_feature(fused), sfe.edit_feature(fused, torch.zeros_like(fused)))


def test_checkpoint_round_trip(sfe, photo, tmp_path):
    path = tmp_path / "sfe_editor_light.pt"
    save_sfe(path, sfe)
    loaded = load_sfe(path)
    assert loaded.cfg == TINY
    with torch.inference_mode():
        for a, b in zip(loaded.inverter.fs_backbone(photo), sfe.inverter.fs_backbone(photo), strict=True):
            assert torch.equal(a, b)


def test_the_reference_training_parts_and_other_entries_are_ignored(sfe, tmp_path):
    """A full training checkpoint also holds the discriminator, the frozen generator and e4e, and top-level
    entries (optimizers): the reference reads only ``inverter.*`` and ``encoder.*`` from it, and so do we."""
    state = dict(sfe.checkpoint_state())
    state.update({"discriminator.b4.fc.weight": torch.zeros(1), "decoder.input.input": torch.zeros(1),
                  "e4e_encoder.input_layer.0.weight": torch.zeros(1)})
    path = tmp_path / "sfe_full.pt"
    torch.save({"state_dict": state, "optimizer": {"lr": 1e-4}}, path)
    assert load_sfe(path).cfg == TINY


@pytest.mark.parametrize(("edit", "named"), [
    (lambda s: s.pop("inverter.fs_backbone.block_2.0.bn1.weight"), "missing keys: fs_backbone.block_2.0.bn1.weight"),
    (lambda s: s.pop("encoder.body.1.body.4.weight"), "missing keys: body.1.body.4.weight"),
    (lambda s: s.update({"encoder.conv.bias": torch.zeros(3)}), "conv.bias [3] (expected [8])"),
    (lambda s: s.update({"inverter.extra": torch.zeros(1)}), "unexpected keys: extra"),
    (lambda s: s.update({"feature_editor.conv.bias": torch.zeros(1)}), "unexpected keys: feature_editor.conv.bias"),
    (lambda s: s.pop("inverter.fs_backbone.content_layer.4.weight"), "content_layer.4.weight"),
])
def test_a_mismatched_checkpoint_is_model_invalid_naming_the_file_and_key(sfe, tmp_path, edit, named):
    state = {k: v.clone() for k, v in sfe.checkpoint_state().items()}
    edit(state)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(PipelineError) as err:
        load_sfe(path)
    assert err.value.code == MODEL_INVALID
    assert named in err.value.message and str(path) in err.value.message


def test_a_file_without_a_state_dict_is_model_invalid(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"inverter.fuser.conv.bias": torch.zeros(1)}, path)
    with pytest.raises(PipelineError, match="no 'state_dict'") as err:
        load_sfe(path)
    assert err.value.code == MODEL_INVALID


def test_the_inverter_input_is_a_plain_bilinear_resize():
    crop = torch.rand(1, 3, 1024, 1024) * 2 - 1
    x = inverter_input(crop)
    # without antialiasing, 4× down is the mean of the two middle pixels of each 4×4 cell's rows and columns
    torch.testing.assert_close(x, crop[:, :, 1::4, 1::4].add(crop[:, :, 2::4, 2::4])
                               .add(crop[:, :, 1::4, 2::4]).add(crop[:, :, 2::4, 1::4]) / 4)
    assert inverter_input(x) is x


# --- the generator: up to a feature, and from an injected one ----------------------------------------------

@torch.inference_mode()
@pytest.mark.parametrize("impl", ["ref", "fast"])
def test_injecting_the_generators_own_feature_changes_nothing(generator, styles, impl):
    generator.impl = impl
    plain = generator.synthesize(styles)
    for resolution in (16, 64):
        own, skip = generator.feature(styles, resolution)
        assert own.shape == (2, CHANNELS[resolution], resolution, resolution) and skip.shape == (2, 3, resolution,
                                                                                                  resolution)
        assert rel_err(generator.synthesize(styles, feature=own), plain) < 1e-6
    other = torch.randn_like(own)
    assert rel_err(generator.synthesize(styles, feature=other), plain) > 0.1


@torch.inference_mode()
def test_every_path_computes_the_same_feature_and_injection(generator, styles):
    out = {}
    for impl in ("ref", "fast"):
        generator.impl = impl
        own, skip = generator.feature(styles, 64)
        out[impl] = (own, skip, generator.synthesize(styles, feature=own * 0.5))
    renderer = CudaRenderer(generator, "float32", graphs=False)  # the CUDA renderer's code, eagerly on the CPU
    own, skip = renderer.render_feature(styles, 64)
    out["cuda eager"] = (own, skip, renderer.render(styles, feature=own * 0.5))
    for name in ("fast", "cuda eager"):
        for ours, ref in zip(out[name], out["ref"], strict=True):
            assert rel_err(ours, ref) < 1e-5, name
    # the feature comes out of the CPU renderer's reused buffers: it outlives the next render
    generator.impl = "fast"
    own, _ = generator.feature(styles, 64)
    kept = own.clone()
    generator.synthesize([s.flip(0) for s in styles])
    assert torch.equal(own, kept)


def test_feature_and_injection_refuse_wrong_shapes(generator, styles):
    with torch.inference_mode():
        with pytest.raises(ValueError, match="resolution must be one of"):
            generator.feature(styles, 128)
        with pytest.raises(ValueError, match="feature must be"):
            generator.synthesize(styles, feature=torch.zeros(2, 5, 64, 64))
        with pytest.raises(ValueError, match="feature must be"):
            generator.synthesize(styles, feature=torch.zeros(1, 8, 64, 64))
        own, _ = generator.feature(styles[:generator.feature_layers(32)], 32)  # only the layers up to 32² needed
        assert own.shape == (2, 12, 32, 32)


@torch.inference_mode()
def test_inversion_and_edit_compose_as_the_reference(sfe, generator, styles, photo):
    generator.impl = "ref"
    inv = sfe.invert(photo, generator)
    codes, predicted = sfe.inverter.fs_backbone(photo)
    own, _ = generator.feature(generator.styles(codes + generator.latent_avg), 64)
    assert torch.equal(inv.wplus, codes + generator.latent_avg)
    assert torch.equal(inv.fused, sfe.inverter.fuser(torch.cat([predicted, own], 1)))
    edited = [s * 1.1 for s in styles]
    delta = feature_delta(generator, styles, edited, 64)
    assert torch.equal(delta, generator.feature(styles, 64)[0] - generator.feature(edited, 64)[0])
    assert not torch.equal(sfe.edit_feature(inv.fused, delta), sfe.edit_feature(inv.fused))


# --- the reference's numbers -------------------------------------------------------------------------------

@needs_golden_sfe
@pytest.mark.slow
def test_golden_sfe():
    from pipeline.golden import run_checks

    results = run_checks(GOLDEN_SFE, only=("sfe",), emit=lambda line: None)
    failed = [c.line() for c in results if not c.ok]
    assert results and not failed, "\n".join(failed)
    assert {c.name.split("]")[0] + "]" for c in results if "[" in c.name} == {"sfe[ref]", "sfe[fast]"}
