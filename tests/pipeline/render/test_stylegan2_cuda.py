"""The CUDA renderer's device-independent parts, on the CPU: the precision choice, the eager render and its
snapshot semantics, and the render layer's bookkeeping. CUDA graphs themselves need a GPU: they are checked by
``python -m pipeline verify-golden DIR --device cuda`` (``pipeline/golden/stylegan2.py``'s CUDA variants) and
measured by ``python -m bench --device cuda`` (docs/BENCHMARKS.md)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pipeline.golden.stylegan2 import Variant, variants
from pipeline.models.stylegan2 import Generator
from pipeline.render.config import RenderConfig
from pipeline.render.cuda import CudaRenderer, choose_precision, probe_styles
from pipeline.render.renderer import Renderer

CHANNELS = {4: 32, 8: 32, 16: 16, 32: 16, 64: 8}


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(3)
    return Generator(64, 64, 2, channels=CHANNELS).eval()


def test_precision_choice_follows_the_tolerance(generator):
    styles = probe_styles(generator)
    precision, errors = choose_precision(generator, tol=1.0, styles=styles)
    assert precision == "float16"
    assert set(errors) == {"float16", "bfloat16"}  # no TF32 on a CPU
    assert all(0 < e < 0.1 for e in errors.values()), errors
    assert errors["bfloat16"] > errors["float16"]  # 8 mantissa bits against 11
    assert choose_precision(generator, tol=0.0, styles=styles)[0] == "float32"
    between = (errors["float16"] + errors["bfloat16"]) / 2
    assert choose_precision(generator, tol=between, styles=styles)[0] == "float16"


def test_non_finite_errors_never_pass(generator, monkeypatch):
    import pipeline.render.cuda as cuda

    monkeypatch.setattr(cuda, "precision_errors", lambda g, s: {"float16": math.nan, "bfloat16": math.inf})
    assert choose_precision(generator, tol=1e9)[0] == "float32"


def test_eager_render_is_the_generator_function_and_a_snapshot(generator):
    styles = probe_styles(generator, batch=3)
    renderer = CudaRenderer(generator, "float32", graphs=False)
    with torch.no_grad():
        expected = generator.synthesize(styles, impl="fast")
        ours = renderer.render(styles)
        assert ours.dtype == torch.float32 and torch.equal(ours, expected)
        assert ours.data_ptr() != renderer.render(styles).data_ptr()  # each call hands out its own tensor

        changed = copy.deepcopy(generator)
        frozen = CudaRenderer(changed, "float32", graphs=False)
        changed.conv1.conv.weight.mul_(2)
        assert torch.equal(frozen.render(styles), expected)  # rendering the weights it copied


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_eager_render_with_a_preview_goes_on_from_the_preview_block(generator, precision):
    """``render_feature`` then ``resume`` (what ``Renderer.render_with_preview`` runs on CUDA): the preview is
    the generator's skip image there, the image the one-step render's (exactly in float32; in float16 the
    block's state goes through float32 and back, which is exact, so within float16 rounding of the whole)."""
    styles = probe_styles(generator, batch=2)
    renderer = CudaRenderer(generator, precision, graphs=False)
    feature = torch.randn(2, CHANNELS[8], 8, 8, generator=torch.Generator().manual_seed(1))  # below 16²
    with torch.no_grad():
        for injected in (None, feature):
            whole = renderer.render(styles, injected)
            x, skip = renderer.render_feature(styles[:generator.feature_layers(16)], 16, injected)
            image = renderer.resume(styles, 16, x, skip)
            _, expected_skip = generator.feature(styles, 16, impl="fast", injected=injected)
            assert x.dtype == skip.dtype == image.dtype == torch.float32
            if precision == "float32":
                assert torch.equal(image, whole) and torch.equal(skip, expected_skip)
            else:
                assert float((image - whole).abs().max() / whole.abs().max()) < 1e-3
        image = renderer.resume(styles, 16, *renderer.render_feature(styles[:generator.feature_layers(16)], 16),
                                feature=feature.new_zeros(2, CHANNELS[32], 32, 32))  # injected above: by resume
        assert image.shape == (2, 3, 64, 64)


def test_half_precision_render_stays_near_float32(generator):
    styles = probe_styles(generator)
    with torch.no_grad():
        reference = generator.synthesize(styles, impl="fast")
        half = CudaRenderer(generator, "bfloat16", graphs=False).render(styles)
    assert half.dtype == torch.float32
    assert float((half - reference).abs().max() / reference.abs().max()) < 0.05


def test_unknown_precision_is_refused(generator):
    with pytest.raises(ValueError, match="precision must be one of"):
        CudaRenderer(generator, "int8", graphs=False)
    with pytest.raises(ValueError, match="precision must be auto or one of"):
        CudaRenderer.from_generator(generator, "fp8")


def test_the_render_layer_rebuilds_its_cuda_renderer_when_weights_change(generator):
    """Its snapshot is keyed by the weights' version: the same renderer while they stay, a new one after a
    load or ``.to()``; the precision and graphs are the config's."""
    g = copy.deepcopy(generator)
    layer = Renderer(g, RenderConfig(cuda_precision="bfloat16", cuda_graphs=False))
    renderer = layer.cuda()
    assert renderer is layer.cuda() and renderer.precision == "bfloat16" and not renderer.graphs
    assert not Renderer(g, RenderConfig(cuda_precision="float32")).cuda().graphs  # graphs only on a CUDA device
    for change in (lambda: g.load_state_dict(g.state_dict()), lambda: g.double().float()):
        held = layer.cuda()
        change()
        assert layer.cuda() is not held


def test_golden_checks_every_render_path():
    assert variants(torch.device("cpu")) == [Variant("reference"), Variant("batched"), Variant("cpu")]
    assert variants(torch.device("cuda")) == [Variant("reference"), Variant("batched"), Variant("cuda", "float32"),
                                              Variant("cuda", "auto")]
