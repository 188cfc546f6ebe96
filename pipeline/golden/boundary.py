"""Global-direction checks: boundary, edited styles and channels kept per beta, then one edited 1024 image.

Fixture keys (``global_boundary.npz``): ``fs3`` (conv channels only), ``dt``, ``code_std`` (per-channel std of
every style layer, concatenated in ``style_layers`` order: our ``style_std``), ``styles`` (sample 0, same
order), ``zstats_w_index`` (the W+ row each style layer reads, i.e. the generator's ``style_wplus_index``: the
layout the std statistics were gathered under), ``alphas``, ``betas`` and the outputs per beta.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pipeline.edit.directions import apply, style_direction
from pipeline.golden import Check, Fixture, compare, exact
from pipeline.models.stylegan2 import Generator
from pipeline.render.renderer import Renderer

TOL_VECTOR = 1e-4
TOL_IMAGE_F16 = 2e-3


def applies(fixture: Fixture) -> bool:
    return (fixture.dir / "global_boundary.npz").is_file()


def checks(fixture: Fixture) -> Iterator[Check]:
    meta = fixture.meta["stylegan2_1024"]
    gb_meta = fixture.meta["global_boundary"]
    ref = fixture.npz("global_boundary")
    dims = list(meta["style_dims"])
    is_rgb = ["to_rgb" in name for name in meta["style_layers"]]
    dev = fixture.device

    fs3 = torch.from_numpy(ref["fs3"]).to(dev)
    dt = torch.from_numpy(ref["dt"]).to(dev)
    std = torch.from_numpy(ref["code_std"]).to(dev)
    styles = [s[None] for s in torch.from_numpy(ref["styles"]).to(dev).split(dims)]
    alphas = [float(a) for a in ref["alphas"]]

    for beta in ref["betas"]:
        name = f"beta_{float(beta):g}"
        direction = style_direction(fs3, dt, float(beta), std, dims, is_rgb)
        yield exact(f"boundary {name} channels_kept", direction.channels_kept,
                    gb_meta["per_beta"][name]["channels_kept"])
        yield compare(f"boundary {name} boundary", direction.flat(), ref[f"{name}_boundary"], TOL_VECTOR)
        edited = torch.cat(apply(styles, direction, alphas), dim=1)
        yield compare(f"boundary {name} edited", edited, ref[f"{name}_edited"], TOL_VECTOR)

    g = Generator(meta["config"]["size"], meta["config"]["style_dim"], meta["config"]["n_mlp"],
                  meta["config"]["channel_multiplier"])
    g.load_state_dict(fixture.weights("stylegan2_1024", g.state_dict()), strict=True)
    g = g.to(dev).eval()
    yield exact("boundary style_dims", g.style_dims, dims)
    yield exact("boundary zstats_w_index = style_wplus_index", g.style_wplus_index, ref["zstats_w_index"])

    spec = gb_meta["edited_image"]
    if spec["sample"] != 0:  # the fixture stores the styles of sample 0 only
        yield Check("boundary edited_image sample", float("inf"), 0.0, f"sample {spec['sample']} not stored")
        return
    direction = style_direction(fs3, dt, float(spec["beta"]), std, dims, is_rgb)
    image = Renderer(g).render(apply(styles, direction, [float(spec["alpha"])]))
    yield compare("boundary edited_image (1024)", image, ref["edited_image"], TOL_IMAGE_F16)
