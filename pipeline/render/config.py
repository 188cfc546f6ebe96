"""``RenderConfig``: how the fast renderers run, as one frozen value (torch-free, so a CLI can offer its choices).

The worker builds it from its settings (``RENDER_NNPACK``, ``RENDER_CUDA_PRECISION``, ``RENDER_CUDA_GRAPHS``),
the CLI and the bench from their flags (``add_arguments`` / ``from_args``); the render layer
(``pipeline/render/renderer.py``) takes it. Library code reads no environment.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

# the CPU renderer's 3×3 convolution route (pipeline/render/nnpack.py): NNPACK called directly into reused
# buffers, PyTorch's own NNPACK call (fresh outputs), or PyTorch's default convolution
NNPACK_MODES = ("direct", "torch", "off")
# the CUDA renderer's precisions (pipeline/render/cuda.py PRECISIONS, cheapest first), after "auto": the
# cheapest within the golden tolerance on the loaded weights, measured when the renderer is built
CUDA_PRECISIONS = ("auto", "float16", "bfloat16", "tf32", "float32")


@dataclass(frozen=True)
class RenderConfig:
    """``nnpack``: one of ``NNPACK_MODES``; ``cuda_precision``: one of ``CUDA_PRECISIONS``; ``cuda_graphs``:
    replay one CUDA graph per batch size (else render eagerly). ``batch_max``: the most images one render
    gathers from several callers (threads sharing an ``Editor``: ``pipeline/render/batching.py``), 1 = each
    renders alone; ``batch_wait_ms``: how long a render may wait for others to join it. The defaults are the
    measured best (docs/BENCHMARKS.md); batching pays on a GPU only (the CPU renderer renders one sample at a
    time), so it is off by default and the worker turns it on for a GPU that runs several jobs."""

    nnpack: str = "direct"
    cuda_precision: str = "auto"
    cuda_graphs: bool = True
    batch_max: int = 1
    batch_wait_ms: float = 3.0

    def __post_init__(self) -> None:
        if self.nnpack not in NNPACK_MODES:
            raise ValueError(f"nnpack must be one of {', '.join(NNPACK_MODES)}, got {self.nnpack!r}")
        if self.cuda_precision not in CUDA_PRECISIONS:
            raise ValueError(f"cuda_precision must be one of {', '.join(CUDA_PRECISIONS)}, "
                             f"got {self.cuda_precision!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be a bool, got {self.cuda_graphs!r}")
        if isinstance(self.batch_max, bool) or not isinstance(self.batch_max, int) or self.batch_max < 1:
            raise ValueError(f"batch_max must be an int >= 1, got {self.batch_max!r}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be in [0, 1000], got {self.batch_wait_ms!r}")

    @property
    def batching(self) -> bool:
        return self.batch_max > 1

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """``--nnpack``, ``--cuda-precision``, ``--no-cuda-graphs`` (the worker's ``RENDER_*`` settings)."""
        parser.add_argument("--nnpack", choices=NNPACK_MODES, default=RenderConfig.nnpack,
                            help="CPU renderer's 3x3 convolution route (setting RENDER_NNPACK; default %(default)s)")
        parser.add_argument("--cuda-precision", choices=CUDA_PRECISIONS, default=RenderConfig.cuda_precision,
                            help="CUDA renderer's precision (setting RENDER_CUDA_PRECISION; default %(default)s)")
        parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                            help="render eagerly on CUDA (setting RENDER_CUDA_GRAPHS=false)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RenderConfig:
        return cls(args.nnpack, args.cuda_precision, args.cuda_graphs)
