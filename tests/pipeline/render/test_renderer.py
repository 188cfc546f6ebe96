"""The render layer: it picks the path that fits (reference, batched, CPU, CUDA), the CPU renderer computes the
reference's function, its snapshot follows the weights' version (in-place writes, loads, ``.to()``), its
options come from a ``RenderConfig``, and the model itself imports no renderer."""

from __future__ import annotations

import ast
import contextlib
import copy
from pathlib import Path

import pytest
import torch

from pipeline.models.stylegan2 import Generator
from pipeline.render import nnpack
from pipeline.render.config import CUDA_PRECISIONS, NNPACK_MODES, RenderConfig
from pipeline.render.cpu import UPSAMPLE_PHASES_MIN_SIZE, CpuRenderer
from pipeline.render.cpu_conv import NNPACK_MIN_SIZE
from pipeline.render.cuda import PRECISIONS
from pipeline.render.renderer import Renderer, weights_version


@pytest.fixture(scope="module")
def wide() -> Generator:
    """Big enough for every branch of the CPU renderer: NNPACK convolutions (≥32²) and phase upsampling (≥64²)."""
    torch.manual_seed(1)
    g = Generator(128, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 12, 64: 8, 128: 8}).eval()
    assert 128 // 2 >= UPSAMPLE_PHASES_MIN_SIZE >= NNPACK_MIN_SIZE
    with torch.no_grad():
        for conv in [g.conv1, *g.convs]:
            conv.noise.weight.fill_(0.3)
            conv.activate.bias.normal_(0, 0.1)
    return g


def wplus_for(g: Generator, batch: int, seed: int) -> torch.Tensor:
    z = torch.randn(batch, g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return g.mapping(z.flatten(0, 1)).view(batch, g.n_latent, g.style_dim)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max() / b.abs().max())


def reference(g: Generator, wplus: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return g.synthesize(g.styles(wplus), impl="ref")


def test_the_model_imports_no_renderer():
    """The reference model stays readable: no import of the render layer, no renderer state on it."""
    source = Path(__file__).resolve().parents[3] / "pipeline" / "models" / "stylegan2.py"
    imported = {node.module for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(name.startswith("pipeline.render") for name in imported), imported
    assert not any(hasattr(Generator, name) for name in ("cpu_renderer", "cuda_renderer", "weights_changed"))


def test_the_path_fits_the_styles(wide):
    renderer = Renderer(copy.deepcopy(wide))
    cpu_styles = [torch.zeros(1, 4)]
    assert renderer.path(cpu_styles) == "batched"  # autograd on: what training differentiates
    with torch.no_grad():
        assert renderer.path(cpu_styles) == "cpu"
        assert renderer.path([torch.zeros(1, 4, device="meta")]) == "batched"
        renderer.generator.impl = "ref"
        assert renderer.path(cpu_styles) == "reference"


@pytest.mark.parametrize("batch", [1, 3])
def test_the_cpu_renderer_equals_the_reference(wide, batch):
    wplus = wplus_for(wide, batch, seed=7)
    ref = reference(wide, wplus)
    renderer = Renderer(wide)
    with torch.inference_mode():
        served = renderer(wplus)
        standalone = CpuRenderer.from_generator(wide).render(wide.styles(wplus))
    assert "cpu" in renderer.snapshots()
    batched = renderer(wplus)  # autograd on: the model's batched shared-weight / grouped path
    assert rel_err(served, ref) < 1e-5 and rel_err(batched.detach(), ref) < 1e-5
    assert torch.equal(standalone, served)


def test_a_render_on_the_calling_thread_alone_is_the_same_render(wide, monkeypatch):
    """``CpuRenderer.render`` keeps PyTorch's ops on its thread (``nnpack.torch_ops_on_this_thread``): the same
    numbers as with PyTorch's threads, up to float32 reassociation (bit-identical on the machine that measured
    it; 8e-8 relative on this session's 2-core machine, whose threaded reductions sum in another order)."""
    styles = wide.styles(wplus_for(wide, 1, seed=13))
    renderer = CpuRenderer.from_generator(wide)
    with torch.inference_mode():
        alone = renderer.render(styles)
        monkeypatch.setattr(nnpack, "torch_ops_on_this_thread", lambda mode: contextlib.nullcontext())
        shared = renderer.render(styles)
    assert rel_err(alone, shared) < 1e-6


@pytest.mark.parametrize("mode", ["torch", "off"])
def test_renders_with_the_direct_nnpack_call_switched_off(wide, mode):
    """``RenderConfig(nnpack="torch"|"off")``: the same image, without the ctypes call (and for ``off`` without
    NNPACK)."""
    wplus = wplus_for(wide, 2, seed=12)
    renderer = Renderer(wide, RenderConfig(nnpack=mode))
    with torch.inference_mode():
        assert rel_err(renderer(wplus), reference(wide, wplus)) < 1e-5
    cpu = renderer.snapshots()["cpu"]  # it did take the CPU renderer's path, in this mode
    assert cpu.nnpack_mode == mode and not nnpack.available(mode)


def test_the_snapshot_follows_the_weights_version(wide):
    """The CPU renderer copies what it derives from the weights; the render layer notices any change of them
    (an in-place write, a load, ``.to()``) by the weights' version and builds a new one; nobody announces it."""
    g = copy.deepcopy(wide)
    renderer = Renderer(g)
    wplus = wplus_for(g, 1, seed=8)
    layer = g.convs[8].conv  # an upsampling layer on the phase path
    with torch.inference_mode():
        before = renderer(wplus)
        first = renderer.cpu()
        assert renderer.cpu() is first  # unchanged weights: the same snapshot
    with torch.no_grad():
        layer.weight.mul_(1.5).add_(0.1)
    with torch.inference_mode():
        after = renderer(wplus)
    assert renderer.cpu() is not first
    assert rel_err(after, reference(g, wplus)) < 1e-5 and rel_err(after, before) > 1e-3
    for change in (lambda: g.load_state_dict(wide.state_dict()), lambda: g.double().float(),
                   lambda: g.load_state_dict(wide.state_dict(), assign=True)):
        held = renderer.cpu()
        change()
        assert renderer.cpu() is not held
    with torch.inference_mode():
        assert rel_err(renderer(wplus), before) < 1e-6
    assert weights_version(list(g.modules())) == weights_version(list(g.modules()))


def test_the_old_snapshot_keeps_rendering_the_weights_it_copied(wide):
    g = copy.deepcopy(wide)
    wplus = wplus_for(g, 1, seed=8)
    snapshot = CpuRenderer.from_generator(g)
    with torch.inference_mode():
        before = snapshot.render(g.styles(wplus))
    with torch.no_grad():
        g.convs[8].conv.weight.mul_(1.5)
    with torch.inference_mode():
        assert torch.equal(snapshot.render(g.styles(wplus)), before)  # not half-updated


@torch.inference_mode()
def test_what_render_returns_outlives_the_next_render(wide):
    """The CPU renderer reuses buffers between renders; none of them may be what the caller gets back."""
    renderer = Renderer(wide)
    styles = [wide.styles(wplus_for(wide, 1, seed=seed)) for seed in (9, 10)]
    first = renderer.render(styles[0])
    kept = first.clone()
    second = renderer.render(styles[1])
    assert torch.equal(first, kept) and rel_err(first, second) > 1e-2
    assert renderer.cpu().buffer_bytes() > 0


def test_renders_in_and_out_of_inference_mode_share_the_buffers(wide):
    """The worker renders under inference mode, the golden runner and tools under no_grad: either may come first."""
    renderer = Renderer(copy.deepcopy(wide))
    wplus = wplus_for(wide, 1, seed=11)
    with torch.inference_mode():
        first = renderer(wplus)
    with torch.no_grad():
        assert torch.equal(renderer(wplus), first)
    with torch.inference_mode():
        assert torch.equal(renderer(wplus), first)


def test_render_refuses_wrong_styles(wide):
    styles = wide.styles(wplus_for(wide, 1, seed=4))
    with torch.no_grad(), pytest.raises(ValueError, match="expected"):
        Renderer(wide).render(styles[:-1])


def test_the_config_refuses_unknown_values_and_names_the_choices():
    assert RenderConfig() == RenderConfig("direct", "auto", True)
    with pytest.raises(ValueError, match="direct, torch, off"):
        RenderConfig(nnpack="fast")
    with pytest.raises(ValueError, match="auto, float16"):
        RenderConfig(cuda_precision="fp8")
    with pytest.raises(ValueError, match="bool"):
        RenderConfig(cuda_graphs="0")
    # one list of choices, torch-free, that the renderers' own tables match
    assert NNPACK_MODES == nnpack.MODES and CUDA_PRECISIONS == ("auto", *PRECISIONS)


def injected_feature(g: Generator, batch: int, resolution: int, seed: int) -> torch.Tensor:
    """A feature shaped as SFE's, for the block at ``resolution``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, g.channels[resolution], resolution, resolution, generator=generator)


@pytest.mark.parametrize("path", ["reference", "batched", "cpu"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("inject", [None, 16, 32])
def test_a_render_with_a_preview_is_the_same_render_gone_on(wide, path, batch, inject):
    """``render_with_preview`` yields the generator's own skip image at a quarter of the size, then the same
    image as ``render`` (on the CPU path bit for bit: the same layers, none twice), with SFE's feature injected
    below the preview's block (16²) or at it (32²: injected by the second step)."""
    g = copy.deepcopy(wide)
    if path == "reference":
        g.impl = "ref"
    renderer = Renderer(g)
    styles = g.styles(wplus_for(g, batch, seed=21))
    feature = injected_feature(g, batch, inject, seed=3) if inject else None
    grad = torch.enable_grad() if path == "batched" else torch.no_grad()
    with grad:
        assert renderer.path(styles) == path
        whole = renderer.render(styles, feature)
        steps = list(renderer.render_with_preview(styles, feature))
        _, skip = g.feature(styles, renderer.preview_resolution, impl="ref",
                            injected=feature if inject and inject < renderer.preview_resolution else None)
    assert [r for r, _ in steps] == [32, 128] and renderer.preview_resolution == 32
    (_, preview), (_, image) = steps
    assert preview.shape == (batch, 3, 32, 32)
    assert rel_err(preview.detach(), skip.detach()) < 1e-5
    if path == "cpu":
        assert torch.equal(image, whole)
    else:
        assert rel_err(image.detach(), whole.detach()) < 1e-6


@pytest.mark.parametrize("path", ["reference", "cpu"])
def test_the_rest_of_a_preview_render_takes_later_styles_sent_to_it(wide, path):
    """The preview reads only its first layers' styles: a render started from styles whose later layers are
    placeholders, then sent the right ones, is the render of the right ones (what ``Editor.render`` does while
    an inversion finishes its last rows); styles of another batch are refused."""
    g = copy.deepcopy(wide)
    if path == "reference":
        g.impl = "ref"
    renderer = Renderer(g)
    right = g.styles(wplus_for(g, 1, seed=5))
    layers = g.feature_layers(renderer.preview_resolution)
    placeholder = right[:layers] + [torch.full_like(s, float("nan")) for s in right[layers:]]
    with torch.no_grad():
        whole = renderer.render(right)
        steps = renderer.render_with_preview(placeholder)
        _, preview = next(steps)
        assert torch.isfinite(preview).all()
        _, image = steps.send(right)
        assert rel_err(image, whole) < 1e-6
        steps = renderer.render_with_preview(placeholder)
        next(steps)
        with pytest.raises(ValueError, match="of 2 faces, the preview's of 1"):
            steps.send(g.styles(wplus_for(g, 2, seed=6)))


def test_resume_refuses_a_state_of_another_shape(wide):
    styles = wide.styles(wplus_for(wide, 1, seed=2))
    x, skip = wide.feature(styles, 32)
    with pytest.raises(ValueError, match="feature\\(\\)'s output at 32"):
        wide.resume(styles, 32, x[:, :4], skip)
    with pytest.raises(ValueError, match="resolution must be one of"):
        wide.resume(styles, 128, x, skip)
