"""StyleGAN2 synthesis for inference on a CUDA GPU: the function ``Generator.synthesize`` computes, in less time.

At batch 1 a 1024² render is a few hundred small kernels; at the low resolutions each does microseconds of
work, so the launches set the time, not the arithmetic. This renderer

* renders in the cheapest precision whose image stays within the golden tolerance of float32 on *these* weights
  (``choose_precision``: measured once per renderer on a fixed set of styles; float16, then bfloat16, then
  TF32, else float32): half precision halves the bytes each layer moves and uses the tensor cores;
* records each batch size's render once as a CUDA graph and replays it with one launch (``torch.cuda.CUDAGraph``):
  styles are copied into the graph's input tensors, the image is copied out of its output.

Measured on an H200 (docs/BENCHMARKS.md): graphs take a batch-1 render from 9.2 to 5.8 ms (TF32) and 8.7 to
5.0 ms (float16); channels-last feature maps were no faster at batch 1 and 45 % slower at batch 16, so the
layout stays NCHW.

It is a snapshot, like ``CpuRenderer``: ``CudaRenderer.from_generator(g)`` copies ``g`` in the chosen dtype, so
changing ``g`` afterwards leaves it rendering the old weights; the render layer (``pipeline/render/renderer.py``)
builds a new one when the weights version moves.

The precision (``auto`` or one of ``PRECISIONS``) and whether to record graphs are arguments
(``RenderConfig.cuda_precision`` and ``cuda_graphs``, from the ``RENDER_CUDA_*`` settings).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipeline.models.stylegan2 import Generator

log = logging.getLogger(__name__)

# Cheapest first. "tf32": float32 tensors, convolutions on the tensor cores with 10-bit mantissas (cuDNN's default
# on Ampere and later); "float32": TF32 off, the exact reference.
PRECISIONS: dict[str, tuple[torch.dtype, bool]] = {"float16": (torch.float16, False), "bfloat16": (torch.bfloat16, False),
                                                   "tf32": (torch.float32, True), "float32": (torch.float32, False)}
# The golden README's tolerance for a 1024² image (max |ours − ref| / max |ref|): about half an 8-bit level on a
# typical image, invisible once rounded to the photo's pixels.
HALF_PRECISION_TOL = 2e-3
# Batches are rounded up to one of these sizes, so a server sees a handful of graphs, not one per batch size;
# larger batches render in chunks of the largest. A graph keeps its intermediates: at 1024² and batch 16 the
# transposed convolution's output alone is 8.6 GB in float32, so larger graphs would hold tens of GB for no gain
# (an H200 renders ~210 images/s at batch 8 and at 64 alike).
GRAPH_BATCHES = (1, 2, 4, 8, 16)


def probe_styles(generator: Generator, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """Fixed, realistic styles for the precision check: mapped random z (trained weights: faces)."""
    device = generator.input.input.device
    z = torch.randn(batch, generator.style_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        return generator.styles(generator.mapping(z))


@contextmanager
def precision_flags(precision: str, benchmark: bool | None = None) -> Iterator[None]:
    """cuDNN's TF32 switch (and optionally its autotuner) as ``precision`` needs, restored afterwards."""
    tf32 = PRECISIONS[precision][1]
    bench = torch.backends.cudnn.benchmark if benchmark is None else benchmark
    with torch.backends.cudnn.flags(enabled=True, benchmark=bench, deterministic=False, allow_tf32=tf32):
        yield


def render_in(generator: Generator, styles: list[torch.Tensor], precision: str) -> torch.Tensor:
    """``generator``'s batched render with ``styles`` in ``precision`` (the generator must already hold that
    dtype), as float32."""
    dtype = PRECISIONS[precision][0]
    with torch.no_grad(), precision_flags(precision):
        return generator.synthesize([s.to(dtype) for s in styles], impl="fast").float()


def precision_errors(generator: Generator, styles: list[torch.Tensor]) -> dict[str, float]:
    """Relative image error (max |low − float32| / max |float32|) of each cheaper precision on this device
    (``tf32`` only on CUDA), against float32 with TF32 off."""
    cuda = generator.input.input.device.type == "cuda"
    reference = render_in(generator, styles, "float32")
    scale = reference.abs().max().clamp_min(1e-12)
    errors = {}
    for precision, (dtype, tf32) in PRECISIONS.items():
        if precision == "float32" or (tf32 and not cuda):
            continue
        low = generator if dtype == torch.float32 else copy.deepcopy(generator).to(dtype)
        errors[precision] = float(((render_in(low, styles, precision) - reference).abs().max() / scale).item())
        del low
    return errors


def choose_precision(generator: Generator, tol: float = HALF_PRECISION_TOL,
                     styles: list[torch.Tensor] | None = None) -> tuple[str, dict[str, float]]:
    """The cheapest precision whose image stays within ``tol`` of float32 on these weights (and the errors
    measured): float16, bfloat16 (fewer mantissa bits: rarely passes), tf32, else float32. NaN never passes."""
    errors = precision_errors(generator, styles if styles is not None else probe_styles(generator))
    for precision in PRECISIONS:
        if precision == "float32" or errors.get(precision, float("nan")) <= tol:
            return precision, errors
    raise AssertionError("unreachable: float32 always qualifies")


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # the graph reads its input here (the styles, then an injected feature) ...
    outputs: tuple[torch.Tensor, ...]  # ... and writes its output here


class CudaRenderer:
    """Renders ``Generator.synthesize``'s function (and ``Generator.feature``'s) from a private copy of the
    weights in ``precision``, replaying one CUDA graph per batch size and kind of call when ``graphs`` (else
    eagerly). Thread-safe: renders are serialized."""

    def __init__(self, generator: Generator, precision: str, graphs: bool, errors: dict[str, float] | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision, self.graphs, self.errors = precision, graphs, dict(errors or {})
        self.dtype = PRECISIONS[precision][0]
        self._model = copy.deepcopy(generator).to(self.dtype).eval()
        self._model.requires_grad_(False)
        self._captured: dict[tuple, _Graph] = {}
        self._pool = None
        self._lock = threading.Lock()

    @classmethod
    def from_generator(cls, generator: Generator, precision: str = "auto", graphs: bool = True) -> CudaRenderer:
        """A renderer for ``generator``'s current weights in ``precision`` (``auto``: the cheapest within the
        golden tolerance, measured now), replaying CUDA graphs when ``graphs`` (only on a CUDA device)."""
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
        precision, errors = choose_precision(generator) if precision == "auto" else (precision, {})
        graphs = graphs and generator.input.input.device.type == "cuda"
        log.info("generator renders in %s (%s), CUDA graphs %s", precision,
                 f"chosen: image error vs float32 {errors}, tolerance {HALF_PRECISION_TOL}" if errors
                 else "as configured", "on" if graphs else "off")
        return cls(generator, precision, graphs=graphs, errors=errors)

    def render(self, styles: list[torch.Tensor], feature: torch.Tensor | None = None) -> torch.Tensor:
        """Style vectors ``[B, C_i]`` (and SFE's injected ``feature`` ``[B,C_r,r,r]``, see
        ``Generator.synthesize``) → float32 image ``[B, 3, size, size]`` (a new tensor, the caller's)."""
        inputs = [*styles, feature] if feature is not None else list(styles)
        key = ("image", None if feature is None else feature.shape[-1])
        (image,) = self._run(key, inputs, lambda args: (self._model.synthesize(
            args[:len(styles)], args[len(styles)] if feature is not None else None, impl="fast"),))
        return image

    def render_feature(self, styles: list[torch.Tensor], resolution: int,
                       injected: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``Generator.feature``: the ``resolution`` block's output and skip image, as float32 (new tensors);
        ``injected`` as there."""
        n = len(styles)
        inputs = [*styles, injected] if injected is not None else list(styles)
        key = ("feature", resolution, None if injected is None else injected.shape[-1])
        feature, skip = self._run(key, inputs, lambda args: self._model.feature(
            args[:n], resolution, impl="fast", injected=args[n] if injected is not None else None))
        return feature, skip

    def resume(self, styles: list[torch.Tensor], resolution: int, x: torch.Tensor, skip: torch.Tensor,
               feature: torch.Tensor | None = None) -> torch.Tensor:
        """``Generator.resume``: the layers above ``resolution`` from ``render_feature``'s output → float32
        images (a new tensor). ``x`` and ``skip`` go back to this renderer's dtype (from float32: exact)."""
        n = len(styles)
        inputs = [*styles, x, skip, *([feature] if feature is not None else [])]
        key = ("resume", resolution, None if feature is None else feature.shape[-1])
        (image,) = self._run(key, inputs, lambda args: (self._model.resume(
            args[:n], resolution, args[n], args[n + 1], args[n + 2] if feature is not None else None,
            impl="fast"),))
        return image

    def _run(self, key: tuple, inputs: list[torch.Tensor], fn) -> tuple[torch.Tensor, ...]:
        """``fn(inputs in this dtype)`` → float32 outputs, eagerly or through the graph of ``key`` and batch."""
        inputs = [t.detach().to(self.dtype) for t in inputs]
        if not self.graphs:
            with self._lock, torch.no_grad(), precision_flags(self.precision):
                return tuple(out.float() for out in fn(inputs))
        # The graph's tensors are recorded once and written by every later render: under inference mode they
        # would become inference tensors, which no render outside it may write to.
        with self._lock, torch.inference_mode(False), torch.no_grad():
            batch, largest = inputs[0].shape[0], GRAPH_BATCHES[-1]
            chunks = [self._replay(key, [t[i:i + largest] for t in inputs], fn) for i in range(0, batch, largest)]
            return chunks[0] if len(chunks) == 1 else tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))

    def _replay(self, key: tuple, inputs: list[torch.Tensor], fn) -> tuple[torch.Tensor, ...]:
        batch = inputs[0].shape[0]
        graph = self._graph(key, next(b for b in GRAPH_BATCHES if b >= batch), inputs, fn)
        for static, t in zip(graph.inputs, inputs, strict=True):
            static[:batch].copy_(t)
        graph.graph.replay()
        # copies (also in float32, where .float() would be a view): the next replay overwrites the outputs
        return tuple(out[:batch].to(torch.float32, memory_format=torch.contiguous_format, copy=True)
                     for out in graph.outputs)

    def _graph(self, key: tuple, batch: int, example: list[torch.Tensor], fn) -> _Graph:
        """The graph for ``key`` at ``batch`` rows, recorded on first use with inputs shaped as ``example``'s
        rows. Warm-up runs on a side stream first (cuDNN picks its algorithms there, with autotuning, which a
        capture must not do); all graphs share one memory pool, which is safe because renders are serialized
        and each output is copied out at once."""
        found = self._captured.get((*key, batch))
        if found is not None:
            return found
        device = self._model.input.input.device
        static = [torch.zeros(batch, *t.shape[1:], device=device, dtype=self.dtype) for t in example]
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with precision_flags(self.precision, benchmark=True):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn(static)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                outputs = tuple(fn(static))
        captured = self._captured[(*key, batch)] = _Graph(graph, static, outputs)
        return captured
