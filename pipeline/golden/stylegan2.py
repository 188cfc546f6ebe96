"""Golden checks for ``pipeline.models.stylegan2``: mapping, synthesis from W and W+, style space and style edits.

Every ``stylegan2_*`` entry of the fixture's meta with a ``config`` and an ``.npz`` of the same name is checked,
once per render path that runs on the device (``variants``). The weights go through ``load_state`` (the checkpoint loader's key check), not a bare
``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.golden import Check, Fixture, compare, exact
from pipeline.models.checkpoints import load_state
from pipeline.models.stylegan2 import Generator
from pipeline.render.config import RenderConfig
from pipeline.render.cuda import HALF_PRECISION_TOL, precision_flags
from pipeline.render.renderer import PREVIEW_FRACTION, Renderer

VECTOR_TOL = 1e-4


def image_tol(ref: np.ndarray) -> float:
    """float16-stored images carry their own rounding (README: 2e-3); float32 images 5e-4."""
    return 2e-3 if ref.dtype == np.float16 else 5e-4


def applies(fixture: Fixture) -> bool:
    return bool(generator_entries(fixture))


def checks(fixture: Fixture, names: tuple[str, ...] | None = None) -> Iterator[Check]:
    """All generator checks, or only those of the meta entries ``names`` (e.g. ``("stylegan2_256",)``)."""
    for name in generator_entries(fixture):
        if names is None or name in names:
            yield from _checks_one(fixture, name, fixture.meta[name])


@contextmanager
def reference_precision(device: torch.device) -> Iterator[None]:
    """Float32 as the fixtures were made: cuDNN's TF32 off on a GPU (on by default from Ampere on, it rounds
    convolution inputs to 10-bit mantissas). The ``CudaRenderer`` sets its own precision."""
    if device.type != "cuda":
        yield
        return
    with precision_flags("float32"):
        yield


@dataclass(frozen=True)
class Variant:
    """One render path: ``path`` as ``Renderer.path`` names it; ``precision`` for the CUDA renderer."""

    path: str
    precision: str | None = None

    @property
    def impl(self) -> str:
        return "ref" if self.path == "reference" else "fast"


def variants(device: torch.device) -> list[Variant]:
    """The render paths to check: the reference, the model's batched path (what training differentiates) and
    the device's renderer through the render layer. On a GPU the ``CudaRenderer`` runs twice: in float32 at
    the strict tolerances, and in the precision it chooses by itself (``auto``) at the 1024² image tolerance
    that choice is made with."""
    if device.type != "cuda":
        return [Variant("reference"), Variant("batched"), Variant("cpu")]
    return [Variant("reference"), Variant("batched"), Variant("cuda", "float32"), Variant("cuda", "auto")]


@dataclass(frozen=True)
class RenderFunctions:
    """One variant's ``render(styles, feature=None)`` → image and ``feature(styles, resolution)`` → (block
    output, skip image), and the tag its checks carry."""

    label: str
    render: Callable[..., torch.Tensor]
    feature: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (styles, resolution, injected=None)
    resume: Callable[..., torch.Tensor]  # (styles, resolution, x, skip, feature=None)

    def with_preview(self, styles: list[torch.Tensor], resolution: int,
                     feature: torch.Tensor | None = None) -> torch.Tensor:
        """The image of a render that stopped at ``resolution`` for a preview and went on from there
        (``Renderer.render_with_preview``'s two steps on this path); ``feature``: SFE's, injected by the first
        step when it replaces a block below ``resolution``, else by the second."""
        below = feature is not None and feature.shape[-1] < resolution
        x, skip = self.feature(styles, resolution, feature if below else None)
        return self.resume(styles, resolution, x, skip, None if below else feature)


def render_functions(g: Generator, variant: Variant) -> RenderFunctions:
    """How ``variant`` renders: the model's own path for ``reference`` / ``batched``, else the device's fast
    renderer as the render layer builds it (for the CUDA one, in ``variant.precision``)."""
    if variant.path in ("reference", "batched"):
        impl = variant.impl
        return RenderFunctions("ref" if impl == "ref" else "batched",
                               lambda styles, feature=None: g.synthesize(styles, feature, impl=impl),
                               lambda styles, resolution, injected=None: g.feature(styles, resolution, impl=impl,
                                                                                   injected=injected),
                               lambda styles, resolution, x, skip, feature=None: g.resume(
                                   styles, resolution, x, skip, feature, impl=impl))
    layer = Renderer(g, RenderConfig(cuda_precision=variant.precision or "auto"))
    renderer = layer.cpu() if variant.path == "cpu" else layer.cuda()
    label = "fast"
    if variant.path == "cuda":
        label = f"fast cuda {variant.precision}{f'={renderer.precision}' if variant.precision == 'auto' else ''}"
    return RenderFunctions(label, renderer.render,
                           lambda styles, resolution, injected=None: renderer.render_feature(
                               list(styles[:g.feature_layers(resolution)]), resolution, injected),
                           renderer.resume)


def generator_entries(fixture: Fixture) -> list[str]:
    """The fixture's generator configs: ``stylegan2_*`` meta entries with a ``config`` and an ``.npz``."""
    return [name for name, entry in fixture.meta.items()
            if name.startswith("stylegan2_") and isinstance(entry, dict) and "config" in entry
            and (fixture.dir / f"{name}.npz").exists()]


def _checks_one(fixture: Fixture, name: str, entry: dict) -> Iterator[Check]:
    cfg = entry["config"]
    g = Generator(cfg["size"], cfg["style_dim"], cfg["n_mlp"], cfg["channel_multiplier"])
    load_state(g, fixture.weights(name, g.state_dict()), source=f"golden {name}")
    g = g.to(fixture.device).eval()
    data = fixture.npz(name)
    t = {k: torch.from_numpy(v).to(fixture.device, torch.float32) for k, v in data.items() if v.dtype.kind == "f"}

    yield exact(f"{name} style_layers", g.style_layer_names, entry["style_layers"])
    yield exact(f"{name} style_dims", g.style_dims, entry["style_dims"])
    for variant in variants(fixture.device):
        with reference_precision(fixture.device):
            yield from _checks_variant(g, name, entry, data, t, variant)


def _checks_variant(g: Generator, name: str, entry: dict, data, t: dict[str, torch.Tensor],
                    variant: Variant) -> Iterator[Check]:
    g.impl = variant.impl
    paths = render_functions(g, variant)
    render, tag, tol = paths.render, f"{name}[{paths.label}]", image_tol
    if variant.precision == "auto":
        tol = lambda ref: max(image_tol(ref), HALF_PRECISION_TOL)  # noqa: E731
    if "z" in t and "w" in t:
        w = g.mapping(t["z"])
        yield compare(f"{tag} w", w, data["w"], VECTOR_TOL)
        if "image_from_w" in t:  # from our own w: the reference fed its own w through
            yield compare(f"{tag} image_from_w", render(g.styles(w)), data["image_from_w"], tol(data["image_from_w"]))
    styles = g.styles(t["wplus"])
    for i, s in enumerate(styles):
        key = f"style_{i:02d}"
        if key in data:
            yield compare(f"{tag} {key}", s, data[key], VECTOR_TOL)
    images = {k: data[k] for k in ("image_from_wplus", "image") if k in data}
    edited = dict(_edits(entry, styles, t))
    images.update({k: data[k] for k in edited})
    # one batched synthesis of the unedited and every edited style set, as the editor runs it
    sets = [styles] * (len(images) - len(edited)) + list(edited.values())
    batch = [torch.cat([ss[i] for ss in sets]) for i in range(len(styles))]
    out = render(batch).split(styles[0].shape[0])
    for (key, ref), ours in zip(images.items(), out, strict=True):
        yield compare(f"{tag} {key}", ours, ref, tol(ref))
    key, ref = next(iter(images.items()))  # the same render, stopped at a quarter of the size for a preview
    preview = g.size // PREVIEW_FRACTION
    yield compare(f"{tag} {key} after a {preview}² preview", paths.with_preview(styles, preview), ref, tol(ref))


def _edits(entry: dict, styles: list[torch.Tensor], t: dict[str, torch.Tensor]) -> Iterator[tuple[str, list]]:
    """The fixture's style edits: one channel of one layer (``edit1``), a delta vector on several (``edit2``)."""
    if "edit1" in entry and "edit1_image" in t:
        e = entry["edit1"]
        edited = [s.clone() for s in styles]
        edited[e["layer"]][:, e["channel"]] += e["delta"]
        yield "edit1_image", edited
    if "edit2_layers" in entry and "edit2_image" in t:
        edited = [s.clone() for s in styles]
        for layer in entry["edit2_layers"]:
            edited[layer] = edited[layer] + t[f"edit2_delta_{layer:02d}"]
        yield "edit2_image", edited
