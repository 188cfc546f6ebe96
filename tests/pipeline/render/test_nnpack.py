"""The direct NNPACK call: bit-identical to PyTorch's own, refuses what it cannot do, survives a fork, checks
itself in a child process (a crash there is a fallback here), obeys its mode (``RenderConfig.nnpack``), keeps PyTorch's ops on
the calling thread when asked; and the scratch buffers grow and are reused."""

from __future__ import annotations

import copy
import ctypes
import multiprocessing
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from pipeline.render import nnpack
from pipeline.render.cpu_conv import NNPACK_MIN_SIZE, conv2d_same
from pipeline.render.scratch import Scratch


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


def test_the_self_check_passes_in_a_child_process():
    verdict = nnpack.check_in_child()
    assert verdict.ok, verdict.reason
    assert nnpack.verdict().ok


def test_a_check_that_crashes_its_child_is_a_failed_check_here():
    """A wrong hand-copied signature segfaults: in the child, the parent only reads the verdict."""
    segfault = [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"]
    verdict = nnpack.check_in_child(segfault)
    assert not verdict.ok and "SIGSEGV" in verdict.reason
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    verdict = nnpack.check_in_child(hang, timeout_s=1)
    assert not verdict.ok and "no answer" in verdict.reason
    verdict = nnpack.check_in_child([sys.executable, "-c", "print('failed: status 3'); raise SystemExit(1)"])
    assert not verdict.ok and "status 3" in verdict.reason


@pytest.fixture
def failed_check(monkeypatch):
    """This process's verdict as if the child had crashed (the real runner on a real segfault)."""
    segfault = [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"]
    real = nnpack.check_in_child
    monkeypatch.setattr(nnpack, "check_in_child", lambda: real(segfault))
    nnpack.verdict.cache_clear()
    yield
    nnpack.verdict.cache_clear()


@torch.inference_mode()
def test_a_failed_check_falls_back_to_pytorchs_call(failed_check):
    assert not nnpack.verdict().ok and not nnpack.available()
    x, weight, bias = conv_case(3, hw=(NNPACK_MIN_SIZE, NNPACK_MIN_SIZE + 5))
    out = torch.zeros(1, 9, *x.shape[2:])
    assert not nnpack.conv3x3_into(x, weight, bias, out) and not out.any()
    result = conv2d_same(x, weight, bias, out=out)
    assert result.data_ptr() != out.data_ptr()
    assert torch.equal(result, torch._nnpack_spatial_convolution(x, weight, bias, [1, 1]))


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["direct", "torch", "off"])
def test_the_switch(mode):
    """``direct`` writes into the caller's buffer, ``torch`` is PyTorch's NNPACK call, ``off`` PyTorch's default."""
    x, weight, bias = conv_case(4, hw=(NNPACK_MIN_SIZE + 3, NNPACK_MIN_SIZE))
    out = torch.zeros(1, 9, *x.shape[2:])
    result = conv2d_same(x, weight, bias, out=out, nnpack_mode=mode)
    assert (result.data_ptr() == out.data_ptr()) == (mode == "direct") == nnpack.available(mode)
    expected = F.conv2d(x, weight, bias, padding=1) if mode == "off" else \
        torch._nnpack_spatial_convolution(x, weight, bias, [1, 1])
    assert torch.equal(result, expected)


def test_an_unknown_switch_value_is_refused():
    with pytest.raises(ValueError, match="'fast': expected one of direct, torch, off"):
        nnpack.available("fast")
    x, weight, bias = conv_case(4, hw=(NNPACK_MIN_SIZE, NNPACK_MIN_SIZE))
    with pytest.raises(ValueError, match="'fast'"):
        conv2d_same(x, weight, bias, nnpack_mode="fast")


def test_torch_ops_run_on_the_calling_thread_alone_within(monkeypatch):
    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("PyTorch runs one thread here: nothing to narrow")
    assert nnpack.available()
    monkeypatch.setattr(nnpack, "_state", None)  # the pool is made inside: it must still get every thread
    seen: dict[str, int] = {}
    with nnpack.torch_ops_on_this_thread():
        seen["inside"] = torch.get_num_threads()
        other = threading.Thread(target=lambda: seen.setdefault("other thread", torch.get_num_threads()))
        other.start()
        other.join()
        x, weight, bias = conv_case(5)
        out = torch.empty(1, 9, 37, 41)
        assert nnpack.conv3x3_into(x, weight, bias, out)
        assert torch.equal(out, torch._nnpack_spatial_convolution(x, weight, bias, [1, 1]))
    assert seen == {"inside": 1, "other thread": threads}
    assert torch.get_num_threads() == threads
    count = nnpack._library().pthreadpool_get_threads_count
    count.restype, count.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    assert count(nnpack._state.pool) == threads

    with pytest.raises(KeyError), nnpack.torch_ops_on_this_thread():
        raise KeyError("an error inside")
    assert torch.get_num_threads() == threads  # restored on the way out


@pytest.mark.parametrize("mode", ["torch", "off"])
def test_without_the_direct_call_torch_keeps_its_threads(mode):
    """PyTorch's convolutions (``torch``: its NNPACK on its own pool; ``off``: oneDNN) need its threads."""
    threads = torch.get_num_threads()
    with nnpack.torch_ops_on_this_thread(mode):
        assert torch.get_num_threads() == threads
