"""NNPACK's Winograd 3×3 convolution called directly, so that its output lands in a buffer the caller reuses.

PyTorch ships NNPACK inside ``libtorch_cpu`` and exposes it as ``torch._nnpack_spatial_convolution``, which
allocates a fresh output on every call. On a 1024² synthesis the fresh 64–128 MB outputs cost ~40 ms each in
page faults on first touch: about 15 % of the whole render. This module binds NNPACK's C API
(``nnp_convolution_inference`` from ``nnp.h``, stable since 2017) with ctypes, keeps one grow-only workspace and
one thread pool per process, and writes into an output tensor the caller owns.

The signatures are copied by hand, so a mismatch could crash the process. The first use therefore checks the
call in a child process (``python -m pipeline.render.nnpack``), where a crash costs only the child, then once more in
this process against ``torch._nnpack_spatial_convolution`` (the same library and algorithm: bit-identical); the
verdict is kept for the process. Missing symbols, a failed or crashed check, or any non-success status and
``available()`` is False: callers fall back to PyTorch's own calls, which compute the same function.

The caller chooses among ``MODES`` (``RenderConfig.nnpack``, from the ``RENDER_NNPACK`` setting): ``direct``
(default) this call; ``torch`` only PyTorch's own NNPACK call (fresh outputs, no ctypes); ``off`` no NNPACK at
all (PyTorch's default convolution).

NNPACK's pool workers spin-wait for the next call after each one (pthreadpool), and PyTorch's OpenMP workers
spin at the end of each parallel loop: on two cores, the passes between two convolutions then share the cores
among more threads than there are, and a loop's threads wait for each other. ``torch_ops_on_this_thread`` keeps
PyTorch's own ops on the calling thread while ``CpuRenderer`` renders (the numbers are in its ``render``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.render.config import NNPACK_MODES as MODES

log = logging.getLogger(__name__)

# the child imports torch from scratch: seconds on an idle machine, far more on a loaded one
CHECK_TIMEOUT_S = 180.0

_WT8X8 = 3  # nnp_convolution_algorithm_wt8x8: Winograd F(6×6, 3×3), what PyTorch's "auto" picks for 3×3
_COMPUTE = 1  # nnp_convolution_transform_strategy_compute: transform the kernel on each call (it changes)
_IDENTITY = 0  # nnp_activation_identity
_SUCCESS = 0


class _Size(ctypes.Structure):
    _fields_ = [("width", ctypes.c_size_t), ("height", ctypes.c_size_t)]


class _Padding(ctypes.Structure):
    _fields_ = [("top", ctypes.c_size_t), ("right", ctypes.c_size_t), ("bottom", ctypes.c_size_t),
                ("left", ctypes.c_size_t)]


@functools.cache
def _library() -> ctypes.CDLL | None:
    """``libtorch_cpu`` with the NNPACK entry points typed, or None when this build lacks them."""
    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        lib = ctypes.CDLL(str(path))
        conv, init, create = lib.nnp_convolution_inference, lib.nnp_initialize, lib.pthreadpool_create
    except (OSError, AttributeError):
        return None
    conv.restype = ctypes.c_int
    conv.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, _Size, _Padding, _Size, _Size,
                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                     ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_int, ctypes.c_void_p,
                     ctypes.c_void_p, ctypes.c_void_p]
    init.restype = ctypes.c_int
    create.restype, create.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    return lib


class _Process:
    """The per-process state: a thread pool (threads do not survive a fork, so never inherit one) and the
    workspace, grown to the largest convolution seen and kept, as PyTorch's own NNPACK wrapper does."""

    def __init__(self, lib: ctypes.CDLL):
        self.pid = os.getpid()
        self.pool = lib.pthreadpool_create(torch.get_num_threads())
        self.workspace = torch.empty(0, dtype=torch.uint8)
        self.lock = threading.Lock()


_state: _Process | None = None


def _process(lib: ctypes.CDLL) -> _Process:
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = _Process(lib)
    return _state


def _run(lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> int:
    cin, height, width = x.shape[1:]
    state = _process(lib)

    def call(workspace: int | None, size: ctypes.c_size_t) -> int:
        return lib.nnp_convolution_inference(
            _WT8X8, _COMPUTE, cin, weight.shape[0], _Size(width, height), _Padding(1, 1, 1, 1), _Size(3, 3),
            _Size(1, 1), x.data_ptr(), weight.data_ptr(), bias.data_ptr(), out.data_ptr(), workspace,
            ctypes.byref(size), _IDENTITY, None, state.pool, None)

    with state.lock:
        size = ctypes.c_size_t(0)
        status = call(None, size)  # no workspace: NNPACK only reports the size it needs
        if status != _SUCCESS:
            return status
        if state.workspace.numel() < size.value + 64:
            state.workspace = torch.empty(size.value + 64, dtype=torch.uint8)  # +64: room to align
        base = state.workspace.data_ptr()
        return call(base + (-base % 64), size)


def check_mode(mode: str) -> str:
    """``mode`` if it is one of ``MODES``, else a ``ValueError`` naming them."""
    if mode not in MODES:
        raise ValueError(f"NNPACK mode {mode!r}: expected one of {', '.join(MODES)}")
    return mode


@functools.cache
def in_pytorch() -> bool:
    """Whether this PyTorch build has NNPACK and it initializes on this CPU (the call also initializes it, which
    ``torch._nnpack_spatial_convolution`` needs before its first use)."""
    return hasattr(torch, "_nnpack_spatial_convolution") and bool(torch._nnpack_available())


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def check_here() -> Verdict:
    """Call NNPACK directly on a small case and compare with PyTorch's own call (may crash on a wrong
    signature: run it in a child first, see ``check_in_child``)."""
    lib = _library()
    if lib is None:
        return Verdict(False, "libtorch_cpu has no NNPACK entry points")
    if not in_pytorch() or lib.nnp_initialize() != _SUCCESS:
        return Verdict(False, "NNPACK does not initialize on this CPU")
    gen = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(1, 5, 13, 11, generator=gen), torch.randn(7, 5, 3, 3, generator=gen), \
        torch.randn(7, generator=gen)
    out = torch.full((1, 7, 13, 11), float("nan"))
    status = _run(lib, x, weight, bias, out)
    if status != _SUCCESS:
        return Verdict(False, f"nnp_convolution_inference returned status {status}")
    if not torch.equal(out, torch._nnpack_spatial_convolution(x, weight, bias, [1, 1])):
        return Verdict(False, "the direct call differs from torch._nnpack_spatial_convolution")
    return Verdict(True, "bit-identical to torch._nnpack_spatial_convolution")


def check_in_child(command: list[str] | None = None, timeout_s: float = CHECK_TIMEOUT_S) -> Verdict:
    """Run the check in a fresh interpreter (``command``, default ``python -m pipeline.render.nnpack``): a crash or a
    hang there is a failed check here. The child exits 0 and prints ``ok`` when the call is right."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the pipeline package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    command = command or [sys.executable, "-m", "pipeline.render.nnpack"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return Verdict(False, f"the check in a child process gave no answer within {timeout_s:.0f} s")
    except OSError as exc:
        return Verdict(False, f"the check's child process did not start: {exc}")
    if proc.returncode < 0:
        return Verdict(False, f"the check crashed its child process ({signal.Signals(-proc.returncode).name})")
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0 or not last.startswith("ok"):
        detail = last or (proc.stderr.strip().splitlines() or [""])[-1]
        return Verdict(False, f"the check failed in a child process (exit {proc.returncode}: {detail})")
    return Verdict(True, last)


@functools.cache
def verdict() -> Verdict:
    """Whether the direct call works here: checked in a child process, then in this one; once per process
    (a forked child inherits it: same library, same code)."""
    if _library() is None or not in_pytorch():
        result = Verdict(False, "this PyTorch build has no usable NNPACK")
    else:
        result = check_in_child()
        if result.ok:
            result = check_here()
    if not result.ok:
        log.warning("NNPACK's direct call is not used (%s); convolutions go through PyTorch's own call "
                    "(the render option nnpack=torch silences this check)", result.reason)
    return result


def available(mode: str = "direct") -> bool:
    """Whether the direct call is chosen (``mode`` is ``direct``, the default) and works in this process."""
    return check_mode(mode) == "direct" and verdict().ok


@functools.cache
def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime PyTorch's CPU ops run on (the ``libgomp`` shipped beside ``libtorch_cpu``), or None
    when this build has another one or setting the calling thread's team size does not reach PyTorch."""
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libgomp.so.1"))
        lib.omp_set_num_threads.argtypes, lib.omp_get_max_threads.restype = [ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    reached: list[bool] = []

    def probe() -> None:  # on a thread of its own: a thread's team size is its own (an OpenMP ICV)
        lib.omp_set_num_threads(1)
        reached.append(torch.get_num_threads() == 1)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return lib if reached == [True] else None


@contextlib.contextmanager
def torch_ops_on_this_thread(mode: str = "direct") -> Iterator[None]:
    """Within: PyTorch's parallel CPU ops started from this thread run on it alone, while NNPACK's direct calls
    keep their own pool (sized before, from ``torch.get_num_threads()``). Other threads are unaffected: the
    OpenMP team size is per thread. Does nothing when the direct call is not in use (every convolution is then
    PyTorch's and needs its threads) or the OpenMP runtime is not the one found beside ``libtorch_cpu``."""
    lib = _library()
    omp = _openmp() if lib is not None and available(mode) else None
    if omp is None:
        yield
        return
    _process(lib)  # the pool exists, with the full thread count, before the team shrinks
    torch.get_num_threads()  # PyTorch's once-per-thread setup of the team size, which would undo ours inside
    previous = omp.omp_get_max_threads()
    omp.omp_set_num_threads(1)
    try:
        yield
    finally:
        omp.omp_set_num_threads(previous)


def conv3x3_into(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> bool:
    """``out ← conv2d(x, weight, bias, padding=1)`` for one float32 CPU image; False (``out`` untouched or
    partly written) when the direct call does not apply or fails, so that the caller computes it otherwise."""
    lib = _library()
    cout, cin = weight.shape[:2]
    if (lib is None or x.dtype != torch.float32 or x.device.type != "cpu"
            or x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != cin or weight.shape[2:] != (3, 3)
            or out.shape != (1, cout, *x.shape[2:]) or bias.shape != (cout,)
            or not all(t.is_contiguous() and t.dtype == torch.float32 for t in (x, weight, bias, out))
            or out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() or not available()):
        return False
    return _run(lib, x, weight, bias, out) == _SUCCESS


if __name__ == "__main__":  # the child of check_in_child
    outcome = check_here()
    print(("ok: " if outcome.ok else "failed: ") + outcome.reason)
    sys.exit(0 if outcome.ok else 1)
