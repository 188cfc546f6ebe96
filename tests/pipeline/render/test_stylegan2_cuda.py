"""The CUDA renderer's device-independent parts, on the CPU: settings, the precision choice, the eager render and
its snapshot semantics, and the generator's bookkeeping. CUDA graphs themselves need a GPU: they are checked by
``python -m pipeline verify-golden DIR --device cuda`` (``pipeline/golden/stylegan2.py``'s CUDA variants) and
measured by ``python -m bench --device cuda`` (docs/BENCHMARKS.md)."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from pipeline.golden.stylegan2 import variants
from pipeline.models.stylegan2 import Generator
from pipeline.render.cuda import (
    GRAPHS_ENV,
    PRECISION_ENV,
    CudaRenderer,
    choose_precision,
    configured_precision,
    graphs_enabled,
    probe_styles,
    renders_on_cuda,
)

CHANNELS = {4: 32, 8: 32, 16: 16, 32: 16, 64: 8}


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(3)
    return Generator(64, 64, 2, channels=CHANNELS).eval()


def test_settings_default_and_refuse_unknown_values(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.delenv(GRAPHS_ENV, raising=False)
    assert configured_precision() == "auto" and graphs_enabled()
    monkeypatch.setenv(PRECISION_ENV, " TF32 ")
    monkeypatch.setenv(GRAPHS_ENV, "0")
    assert configured_precision() == "tf32" and not graphs_enabled()
    monkeypatch.setenv(PRECISION_ENV, "fp8")
    with pytest.raises(ValueError, match="FACEEDIT_CUDA_PRECISION='fp8'"):
        configured_precision()
    monkeypatch.setenv(GRAPHS_ENV, "yes")
    with pytest.raises(ValueError, match="FACEEDIT_CUDA_GRAPHS"):
        graphs_enabled()


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
        expected = generator._render(styles, "fast")
        ours = renderer.render(styles)
        assert ours.dtype == torch.float32 and torch.equal(ours, expected)
        assert ours.data_ptr() != renderer.render(styles).data_ptr()  # each call hands out its own tensor

        changed = copy.deepcopy(generator)
        frozen = CudaRenderer(changed, "float32", graphs=False)
        changed.conv1.conv.weight.mul_(2)
        assert torch.equal(frozen.render(styles), expected)  # rendering the weights it copied


def test_half_precision_render_stays_near_float32(generator):
    styles = probe_styles(generator)
    with torch.no_grad():
        reference = generator._render(styles, "fast")
        half = CudaRenderer(generator, "bfloat16", graphs=False).render(styles)
    assert half.dtype == torch.float32
    assert float((half - reference).abs().max() / reference.abs().max()) < 0.05


def test_unknown_precision_is_refused(generator):
    with pytest.raises(ValueError, match="precision must be one of"):
        CudaRenderer(generator, "int8", graphs=False)


def test_generator_drops_its_cuda_renderer_when_weights_change(generator, monkeypatch):
    g = copy.deepcopy(generator)
    monkeypatch.setenv(PRECISION_ENV, "float32")
    renderer = g.cuda_renderer()
    assert renderer is g.cuda_renderer() and not renderer.graphs  # graphs only on a CUDA device
    assert g.cuda_renderer("bfloat16").precision == "bfloat16"  # an explicit precision replaces it
    for change in (lambda: g.load_state_dict(g.state_dict()), lambda: g.to(torch.float32)):
        g.cuda_renderer()
        change()
        assert g._cuda_renderer is None
    g.cuda_renderer()
    assert pickle.loads(pickle.dumps(g))._cuda_renderer is None
    assert copy.deepcopy(g)._cuda_renderer is None


def test_renders_on_cuda_only_for_cuda_styles_without_autograd():
    assert not renders_on_cuda([torch.zeros(1, 4)])
    with torch.no_grad():
        assert not renders_on_cuda([torch.zeros(1, 4)])


def test_golden_checks_the_cuda_renderer_in_both_precisions():
    assert variants(torch.device("cpu")) == [("ref", None), ("fast", None)]
    assert variants(torch.device("cuda")) == [("ref", None), ("fast", "float32"), ("fast", "auto")]
