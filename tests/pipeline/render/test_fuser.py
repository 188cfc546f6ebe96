"""SFE's fuser and Feature Editor on the CPU fast path (``pipeline/render/fuser.py``): the module's answer within
float32 rounding of Winograd (BatchNorms folded, the one before each block kept as a scale), only where it
fits (CPU float32, no autograd), and rebuilt when the weights change."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.sfe import FeatureFuser
from pipeline.render.fuser import CpuFuser, FuserRenderer


@pytest.fixture
def fuser() -> FeatureFuser:
    """A small fuser with every BatchNorm away from identity (random statistics, scales and shifts)."""
    torch.manual_seed(0)
    module = FeatureFuser(16, 2)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.2, 0.2)
            elif isinstance(layer, torch.nn.PReLU):
                layer.weight.uniform_(0.0, 0.5)
    return module.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 16, 64, 64, generator=generator), torch.randn(2, 16, 64, 64, generator=generator) * 0.1


@pytest.mark.parametrize("nnpack_mode", ["direct", "torch", "off"])
def test_the_fast_path_is_the_module_within_float32_rounding(fuser, nnpack_mode):
    a, b = _inputs()
    with torch.no_grad():
        expected = fuser.merge(a, b)
        ours = CpuFuser.from_module(fuser, nnpack_mode).merge(a, b)
    error = (ours - expected).abs().max() / expected.abs().max()
    assert error < 2e-5, error  # Winograd and the folded BatchNorms reassociate float32 sums only


def test_the_renderer_takes_the_fast_path_only_where_it_fits(fuser):
    a, b = _inputs()
    runner = FuserRenderer(fuser)
    with torch.no_grad():
        assert runner.fast(a) and not runner.fast(a.double())
        torch.testing.assert_close(runner.merge(a, b), fuser.merge(a, b), rtol=2e-5, atol=2e-5)
    assert not runner.fast(a)  # autograd on: the module, so gradients flow
    out = runner.merge(a.requires_grad_(), b)
    assert out.requires_grad
    fuser.train()
    with torch.no_grad():
        assert not runner.fast(a)  # training mode: BatchNorm uses the batch, nothing folds
    assert not FuserRenderer(fuser.eval(), "off").fast(a)


def test_a_weight_change_is_seen(fuser):
    a, b = _inputs()
    runner = FuserRenderer(fuser)
    with torch.no_grad():
        before = runner.merge(a, b)
        fuser.body[0].body[1].weight.mul_(2)  # in place: the version counter moves
        after = runner.merge(a, b)
        torch.testing.assert_close(after, fuser.merge(a, b), rtol=2e-5, atol=2e-5)
    assert not torch.allclose(before, after)
