"""Golden checks for StyleFeatureEditor (``pipeline/models/sfe.py``) with the generator's feature rendering and
feature injection, on every render path (format: ``../shared/golden-sfe/README.md``).

The fixture holds the reference's inversion and one edit of each sample; we recompute every stage from the
fixture's input ``x`` with our own tensors (never the fixture's intermediates, which are stored channel-sliced)
and compare each stored array within ``meta.tolerances``. Seeds, batch size, the edit, which arrays are float16
or channel-sliced: all from ``meta.json``; the architectures from ``layouts.json``'s shapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipeline.golden import Check, Fixture, compare, exact, fill_value, seeded_randn
from pipeline.golden.stylegan2 import Variant, reference_precision, render_functions, variants
from pipeline.models.checkpoints import load_state
from pipeline.models.e4e import E4E, Encoder4Editing
from pipeline.models.e4e import PREFIX as E4E_PREFIX
from pipeline.models.e4e import infer_config as e4e_config
from pipeline.models.sfe import SFE, feature_delta, inverter_input
from pipeline.models.sfe import infer_config as sfe_config
from pipeline.models.stylegan2 import Generator
from pipeline.render.cuda import HALF_PRECISION_TOL
from pipeline.render.fuser import CpuFuser
from pipeline.render.renderer import PREVIEW_FRACTION

NPZ = "sfe"
SFE_LAYOUT, GENERATOR_LAYOUT, E4E_LAYOUT = "sfe_editor_light", "stylegan2_1024", "e4e_ffhq_encode"
# Fill rule 4b (README): the BatchNorm closing each residual branch starts at a tenth of rule 4's scale, so the
# random residual nets stay bounded.
RESIDUAL_BN = re.compile(r"(\.bn3\.weight|\.body\.\d+\.body\.5\.weight)$")


def applies(fixture: Fixture) -> bool:
    return (fixture.dir / f"{NPZ}.npz").is_file()


def sfe_fill(key: str, shape: list[int], base_seed: int, constructed: torch.Tensor | None) -> torch.Tensor:
    """The shared fill rule plus rule 4b, checked before rule 4."""
    if len(shape) == 1 and RESIDUAL_BN.search(key):
        return 0.1 * (1 + 0.1 * seeded_randn(key, shape, base_seed))
    return fill_value(key, shape, base_seed, constructed)


def checks(fixture: Fixture) -> Iterator[Check]:
    meta, data = fixture.meta, fixture.npz(NPZ)
    device = fixture.device
    generator, latent_avg = _generator(fixture)
    e4e = _e4e(fixture, generator.latent_avg)
    sfe = _sfe(fixture)
    yield from _fill_rule_checks(fixture)
    t = {k: torch.from_numpy(v).to(device, torch.float32) for k, v in data.items()}
    tol = meta["tolerances"]
    sliced = _channel_slice(meta)

    def check(name: str, ours: torch.Tensor, tag: str = "", floor: float = 0.0) -> Check:
        if name in sliced:
            ours = ours[:, sliced[name]]
        return compare(f"sfe{tag} {name}", ours, data[name], max(float(tol[name]), floor))

    yield exact("sfe style_layers", generator.style_layer_names, meta["style_layers"])
    yield exact("sfe style_dims", generator.style_dims, meta["style_dims"])
    yield from _input_checks(fixture, check)
    yield check("latent_avg", latent_avg)

    x = t["x"]
    codes, predicted = sfe.inverter.fs_backbone(x)
    yield check("wplus_raw", codes)
    yield check("predicted_feat", predicted)
    wplus = codes + generator.latent_avg
    yield check("wplus", wplus)
    styles = generator.styles(wplus)
    yield check("styles", torch.cat(styles, 1))
    yield check("e4e_wplus_raw", e4e.encoder(x))
    e4e_wplus = e4e(x)
    yield check("e4e_wplus", e4e_wplus)
    e4e_styles = generator.styles(e4e_wplus)
    yield check("e4e_styles", torch.cat(e4e_styles, 1))
    delta = t["edit_delta"].split(generator.style_dims)
    codes = _Codes(styles, [s + d for s, d in zip(styles, delta, strict=True)], e4e_styles,
                   [s + d for s, d in zip(e4e_styles, delta, strict=True)], predicted, x)
    # the reference and the device's fast renderers (the model's batched path is held to the reference by the
    # generator's own golden checks and by tests/pipeline/models/test_sfe.py)
    for variant in variants(device):
        if variant.path != "batched":
            with reference_precision(device):
                yield from _render_checks(generator, sfe, variant, codes, check)


@dataclass(frozen=True)
class _Codes:
    """What the render paths start from: SFE's and e4e's style vectors, unedited and edited, the backbone's
    predicted feature, and the inverter's input (``SFE.invert`` runs again on every path)."""

    styles: list[torch.Tensor]
    edited: list[torch.Tensor]
    e4e_styles: list[torch.Tensor]
    e4e_edited: list[torch.Tensor]
    predicted: torch.Tensor
    x: torch.Tensor  # the inverter's input


def _render_checks(generator: Generator, sfe: SFE, variant: Variant, codes: _Codes, check) -> Iterator[Check]:
    """Everything downstream of the generator's 64² feature, on one render path. The CUDA renderer in the
    precision it chooses itself (``auto``) is held to the tolerance that choice is made with."""
    generator.impl = variant.impl
    paths = render_functions(generator, variant)
    tag, floor = f"[{paths.label}]", HALF_PRECISION_TOL if variant.precision == "auto" else 0.0
    resolution = codes.predicted.shape[-1]
    own, skip = paths.feature(codes.styles, resolution)
    yield check("w_feat", own, tag, floor)
    yield check("inversion_skip64", skip, tag, floor)
    # the fuser and the Feature Editor by the render layer's CPU path there (render/fuser.py), else the modules
    fuser = CpuFuser.from_module(sfe.inverter.fuser).merge if variant.path == "cpu" else None
    editor = CpuFuser.from_module(sfe.feature_editor).merge if variant.path == "cpu" else None
    fused = sfe.invert(codes.x, generator, feature=paths.feature, fuse=fuser).fused  # SFE's inversion on this path
    yield check("fused_feat", fused, tag, floor)
    feature = sfe.edit_feature(fused, edit=editor)
    yield check("feature", feature, tag, floor)
    yield check("inversion", paths.render(codes.styles, feature), tag, floor)
    e4e_feat, _ = paths.feature(codes.e4e_styles, resolution)
    yield check("e4e_feat", e4e_feat, tag, floor)
    feat_delta = feature_delta(generator, codes.e4e_styles, codes.e4e_edited, resolution)
    yield check("feat_delta", feat_delta, tag, floor)
    edited_feature = sfe.edit_feature(fused, feat_delta, edit=editor)
    yield check("edited_feature", edited_feature, tag, floor)
    yield check("edited_image", paths.render(codes.edited, edited_feature), tag, floor)
    preview = generator.size // PREVIEW_FRACTION  # the same render, stopped there for a preview
    yield check("edited_image", paths.with_preview(codes.edited, preview, edited_feature),
                f"{tag} after a {preview}² preview", floor)


# --- models from the fixture's layouts ---------------------------------------------------------------------

def _weights(fixture: Fixture, layout: str, constructed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: sfe_fill(k, s, fixture.base_seed, constructed.get(k)) for k, s in fixture.layouts[layout].items()}


def _generator(fixture: Fixture) -> tuple[Generator, torch.Tensor]:
    cfg = fixture.meta["configs"]["generator"]
    layout = cfg.get("layout", GENERATOR_LAYOUT)
    g = Generator(cfg["size"], cfg["style_dim"], cfg["n_mlp"], cfg["channel_multiplier"])
    load_state(g, _weights(fixture, layout, g.state_dict()), f"golden {layout}")
    latent_avg = fill_value("latent_avg", [cfg["style_dim"]], fixture.base_seed)  # the checkpoint's mean W
    g.latent_avg = latent_avg
    return g.to(fixture.device).eval(), latent_avg


def _e4e(fixture: Fixture, latent_avg: torch.Tensor) -> E4E:
    """SFE adds the *generator's* ``latent_avg`` to e4e's output (the fixture's e4e layout carries its own)."""
    name = fixture.meta["configs"].get("e4e", {}).get("layout", E4E_LAYOUT)
    shapes = {k[len(E4E_PREFIX):]: torch.empty(s, device="meta") for k, s in fixture.layouts[name].items()
              if k.startswith(E4E_PREFIX)}
    encoder = Encoder4Editing(**e4e_config(shapes, f"golden {name}"))
    weights = _weights(fixture, name, {E4E_PREFIX + k: v for k, v in encoder.state_dict().items()})
    load_state(encoder, {k[len(E4E_PREFIX):]: v for k, v in weights.items() if k.startswith(E4E_PREFIX)},
               f"golden {name}")
    return E4E(encoder, latent_avg).to(fixture.device).eval()


def _sfe(fixture: Fixture) -> SFE:
    layout = fixture.layouts[SFE_LAYOUT]
    sfe = SFE(sfe_config({k: torch.empty(s, device="meta") for k, s in layout.items()}, f"golden {SFE_LAYOUT}"))
    sfe.load_checkpoint_state(_weights(fixture, SFE_LAYOUT, sfe.checkpoint_state()), f"golden {SFE_LAYOUT}")
    return sfe.to(fixture.device).eval()


# --- inputs and fixture bookkeeping ------------------------------------------------------------------------

def _fill_rule_checks(fixture: Fixture) -> Iterator[Check]:
    """Rule 4b touches exactly the keys the fixture lists (where it lists them)."""
    listed = fixture.meta.get("fill_rule", {}).get("keys_4b")
    if listed is not None:
        ours = sorted(k for layout in fixture.layouts.values() for k, s in layout.items()
                      if len(s) == 1 and RESIDUAL_BN.search(k))
        yield exact("sfe fill rule 4b keys", ours, sorted(listed))


def _channel_slice(meta: dict) -> dict[str, slice]:
    spec = meta.get("storage", {}).get("channel_slice")
    if not spec:
        return {}
    lo, hi = spec["channels"]
    return {name: slice(lo, hi) for name in spec["arrays"]}


def _input_checks(fixture: Fixture, check) -> Iterator[Check]:
    """``x`` recomputed from the stored 1024² inputs: [0, 1] → [-1, 1] → the Inverter's bilinear 256²."""
    files = fixture.meta.get("inputs", {}).get("files", [])
    if not files:
        return
    images = [np.asarray(Image.open(fixture.dir / name).convert("RGB"), dtype=np.float32) / 255 for name in files]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(fixture.device)
    yield check("x", inverter_input(batch * 2 - 1))
