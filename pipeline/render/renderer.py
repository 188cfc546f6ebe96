"""The render layer: style vectors → images through the reference model or one of its fast renderers.

``pipeline/models/stylegan2.py`` is the readable model; it knows nothing of the renderers. ``Renderer`` sits
above it, as NVlabs/stylegan3 keeps its fast ops apart from the reference ones, and picks per call:

* ``reference``: ``Generator.synthesize`` with ``impl="ref"`` (a generator built with it: the spec, the oracle);
* ``batched``: ``Generator.synthesize`` with ``impl="fast"`` while autograd is on (training, optimization);
* ``cpu``: ``CpuRenderer`` (``render/cpu.py``) for CPU styles without autograd;
* ``cuda``: ``CudaRenderer`` (``render/cuda.py``) for CUDA styles without autograd.

A fast renderer is a snapshot of the weights it was built from. The ``Renderer`` keys each snapshot by
``weights_version`` of the generator's modules and builds a new one when the version moved, so a load, ``.to()``, an optimizer
step or any in-place change of a parameter is seen without anyone having to announce it.

Its options are a ``RenderConfig``, built by whoever holds the settings (the worker from ``common.settings``,
the CLI and the bench from their flags); library code reads no environment.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Literal

import torch

from pipeline.render.config import RenderConfig
from pipeline.render.cpu import CpuRenderer
from pipeline.render.cuda import CudaRenderer

if TYPE_CHECKING:
    from pipeline.models.stylegan2 import Generator

RenderPath = Literal["reference", "batched", "cpu", "cuda"]
PREVIEW_FRACTION = 4  # render_with_preview's preview: the skip image at size / 4 (256² of a 1024² render)


def weights_version(modules: list[torch.nn.Module]) -> tuple[Hashable, ...]:
    """What identifies the current weights of ``modules`` (a model's ``list(model.modules())``) without reading
    them: each parameter's and buffer's address and PyTorch's version counter, which every in-place write bumps
    (``load_state_dict``'s ``copy_`` and an optimizer step included); ``.to()`` and ``load_state_dict(assign=
    True)`` put new tensors there. Equal versions, equal weights. The module list is taken once (walking the
    tree costs milliseconds at 1024², reading the dicts ~0.1 ms). An inference tensor keeps no counter (and
    can only be written inside inference mode): it counts as unchanged while it stays in place, so such a write
    is the one change this cannot see."""
    return tuple((t.data_ptr(), -1 if t.is_inference() else t._version)
                 for module in modules for held in (module._parameters, module._buffers)
                 for t in held.values() if t is not None)


class Renderer:
    """Renders a ``Generator``'s style vectors through the path that fits them (see ``path``), holding the fast
    renderers' snapshots. Thread-safe: the snapshots are built under a lock, each renderer serializes its own
    renders."""

    def __init__(self, generator: Generator, config: RenderConfig | None = None):
        self.generator = generator
        self.config = config if config is not None else RenderConfig()
        self._modules = list(generator.modules())
        self._lock = threading.Lock()
        self._cpu: tuple[tuple, CpuRenderer] | None = None
        self._cuda: tuple[tuple, CudaRenderer] | None = None

    def path(self, styles: list[torch.Tensor]) -> RenderPath:
        """Which computation ``render(styles)`` runs."""
        if self.generator.impl == "ref":
            return "reference"
        if torch.is_grad_enabled():
            return "batched"
        device = styles[0].device.type
        return "cpu" if device == "cpu" else "cuda" if device == "cuda" else "batched"

    def render(self, styles: list[torch.Tensor], feature: torch.Tensor | None = None) -> torch.Tensor:
        """Style vectors (``Generator.styles`` order, each ``[B,C_i]``) → images ``[B,3,size,size]``, unclamped;
        always a new tensor, the caller's. ``feature`` ``[B,C_r,r,r]``: StyleFeatureEditor's feature, injected
        as ``Generator.synthesize`` does."""
        g = self.generator
        g.check_styles(styles)
        if feature is not None:
            g.check_feature(feature, styles[0].shape[0])
        path = self.path(styles)
        if path == "cpu":
            return self.cpu().render(styles, feature)
        if path == "cuda":
            return self.cuda().render(styles, feature)
        return g.synthesize(styles, feature)

    def render_with_preview(self, styles: list[torch.Tensor], feature: torch.Tensor | None = None,
                            resolution: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """``render``, in two steps: yields ``(resolution, skip image [B,3,r,r])``, the generator's own RGB
        output at ``resolution`` (default ``preview_resolution``: 256² of a 1024² render, after 20 of its 26
        style layers and about half of its convolutions' multiply-adds and time), then ``(size, images)``, the same render gone on from that
        block's state (``feature`` then ``resume``: no layer runs twice). ``feature``: SFE's, injected as in
        ``render`` (below ``resolution``, or at it: then by the second step). Nothing is held between the two
        steps, so the caller may show the preview (paste, store) before asking for the rest. The rest may also
        be asked for with ``send(styles)``: the same styles with their later layers (those after the
        preview, which it never read) known only now (``Editor.render`` with an inversion still finishing
        its last W+ rows)."""
        g = self.generator
        resolution = self.preview_resolution if resolution is None else resolution
        g.check_styles(styles)
        if feature is not None:
            g.check_feature(feature, styles[0].shape[0])
        below = feature if feature is not None and feature.shape[-1] < resolution else None
        x, skip = self.feature(styles, resolution, injected=below)
        later = yield resolution, skip
        if later is not None:
            g.check_styles(later)
            if later[0].shape[0] != styles[0].shape[0]:
                raise ValueError(f"the later styles are of {later[0].shape[0]} faces, the preview's of "
                                 f"{styles[0].shape[0]}")
            styles = later
        yield g.size, self.resume(styles, resolution, x, skip, feature if below is None else None)

    @property
    def preview_resolution(self) -> int:
        """Where ``render_with_preview`` shows its preview: a quarter of the size (256² of 1024²)."""
        return self.generator.size // PREVIEW_FRACTION

    @property
    def preview_rows(self) -> int:
        """How many W+ rows the preview's layers read (14 of 18 for 256² of 1024²): the rest may be computed
        after it (``E4E.staged``)."""
        g = self.generator
        return max(g.style_wplus_index[:g.feature_layers(self.preview_resolution)]) + 1

    def feature(self, styles: list[torch.Tensor], resolution: int,
                injected: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``Generator.feature`` by the path that fits: the ``resolution`` block's output ``[B,C_r,r,r]`` and the
        skip image there ``[B,3,r,r]`` (new tensors); ``injected``: a feature replacing a block below it."""
        g = self.generator
        styles = list(styles[:g.feature_layers(resolution)])
        g.check_styles(styles, partial=True)
        if injected is not None:
            g.check_feature(injected, styles[0].shape[0])
        path = self.path(styles)
        if path == "cpu":
            return self.cpu().render_feature(styles, resolution, injected)
        if path == "cuda":
            return self.cuda().render_feature(styles, resolution, injected)
        return g.feature(styles, resolution, injected=injected)

    def resume(self, styles: list[torch.Tensor], resolution: int, x: torch.Tensor, skip: torch.Tensor,
               feature: torch.Tensor | None = None) -> torch.Tensor:
        """``Generator.resume`` by the path that fits: the layers above ``resolution`` from ``feature``'s
        output → images ``[B,3,size,size]`` (a new tensor)."""
        g = self.generator
        g.check_styles(styles)
        path = self.path(styles)
        if path == "cpu":
            return self.cpu().resume(styles, resolution, x, skip, feature)
        if path == "cuda":
            return self.cuda().resume(styles, resolution, x, skip, feature)
        return g.resume(styles, resolution, x, skip, feature)

    def __call__(self, wplus: torch.Tensor) -> torch.Tensor:
        """W+ ``[B,n_latent,style_dim]`` (or w ``[B,style_dim]``) → images, like ``Generator.forward``."""
        return self.render(self.generator.styles(wplus))

    def cpu(self) -> CpuRenderer:
        """The ``CpuRenderer`` of the generator's current weights (built when they changed)."""
        version = weights_version(self._modules)
        with self._lock:
            if self._cpu is None or self._cpu[0] != version:
                self._cpu = None  # the old snapshot's memory goes before the new one is built
                self._cpu = (version, CpuRenderer.from_generator(self.generator, nnpack_mode=self.config.nnpack))
            return self._cpu[1]

    def cuda(self) -> CudaRenderer:
        """The ``CudaRenderer`` of the generator's current weights and device (built when they changed: that
        measures the precision when ``cuda_precision`` is ``auto``; graphs are recorded as batch sizes come)."""
        version = weights_version(self._modules)
        with self._lock:
            if self._cuda is None or self._cuda[0] != version:
                self._cuda = None
                self._cuda = (version, CudaRenderer.from_generator(
                    self.generator, self.config.cuda_precision, graphs=self.config.cuda_graphs))
            return self._cuda[1]

    def snapshots(self) -> dict[str, CpuRenderer | CudaRenderer]:
        """The fast renderers built so far (for tests and the bench), by path."""
        return {name: held[1] for name, held in (("cpu", self._cpu), ("cuda", self._cuda)) if held is not None}
