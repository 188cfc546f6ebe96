"""The direct NNPACK call: bit-identical to PyTorch's own, refuses what it cannot do, survives a fork; and the
reused scratch buffers never leak into what the generator returns."""

from __future__ import annotations

import copy
import multiprocessing

import pytest
import torch
import torch.nn.functional as F

from pipeline import nnpack
from pipeline.scratch import Scratch


def conv_case(seed: int, cin: int = 6, cout: int = 9, hw: tuple[int, int] = (37, 41)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, cin, *hw, generator=g), torch.randn(cout, cin, 3, 3, generator=g),
            torch.randn(cout, generator=g))


def test_direct_call_equals_pytorchs_nnpack_bit_for_bit():
    assert nnpack.available()
    x, weight, bias = conv_case(0)
    out = torch.full((1, 9, 37, 41), float("nan"))
    assert nnpack.conv3x3_into(x, weight, bias, out)
    assert torch.equal(out, torch._nnpack_spatial_convolution(x, weight, bias, [1, 1]))
    dense = F.conv2d(x, weight, bias, padding=1)
    assert float((out - dense).abs().max() / dense.abs().max()) < 1e-5  # Winograd's rounding, no more


@pytest.mark.parametrize("case", ["float64", "batch 2", "5×5 kernel", "wrong out shape", "strided input", "aliased"])
def test_what_it_cannot_do_is_refused_and_left_untouched(case):
    x, weight, bias = conv_case(1)
    out = torch.zeros(1, 9, 37, 41)
    if case == "float64":
        x = x.double()
    elif case == "batch 2":
        x = torch.cat([x, x])
    elif case == "5×5 kernel":
        weight = torch.randn(9, 6, 5, 5)
    elif case == "wrong out shape":
        out = torch.zeros(1, 9, 37, 40)
    elif case == "strided input":
        x = torch.randn(1, 6, 41, 37).transpose(2, 3)
    elif case == "aliased":
        x = torch.randn(1, 9, 37, 41)
        weight, out = torch.randn(9, 9, 3, 3), x
    before = out.clone()
    assert not nnpack.conv3x3_into(x, weight, bias, out)
    assert torch.equal(out, before)


def _conv_in_child(queue) -> None:
    x, weight, bias = conv_case(2)
    out = torch.empty(1, 9, 37, 41)
    queue.put(bool(nnpack.conv3x3_into(x, weight, bias, out))
              and bool(torch.equal(out, torch._nnpack_spatial_convolution(x, weight, bias, [1, 1]))))


def test_a_forked_child_gets_its_own_thread_pool():
    """Celery's prefork workers fork: a pool inherited without its threads would hang the child."""
    x, weight, bias = conv_case(2)
    assert nnpack.conv3x3_into(x, weight, bias, torch.empty(1, 9, 37, 41))  # the parent has a pool now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_conv_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, "the child hung or crashed"
    assert queue.get(timeout=5) is True


def test_scratch_reuses_and_grows():
    scratch, like = Scratch(), torch.empty(0)
    a = scratch.take("conv", (2, 3), like)
    b = scratch.take("conv", (3, 2), like)
    assert b.data_ptr() == a.data_ptr() and b.shape == (3, 2)
    c = scratch.take("conv", (4, 4), like)  # larger: a new buffer
    assert c.shape == (4, 4) and scratch.nbytes() == 16 * 4
    assert scratch.take("other", (1,), like).data_ptr() != c.data_ptr()
    assert copy.deepcopy(scratch).nbytes() == 0
    scratch.clear()
    assert scratch.nbytes() == 0
