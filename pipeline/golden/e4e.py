"""Golden checks for ``pipeline.models.e4e``: raw encoder output and codes (``+ latent_avg``) on the fixture's input.

The weights are filled into an official-format key set (``encoder.*`` plus ``latent_avg``) and go through the
same key check as ``load_encoder``."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pipeline.golden import Check, Fixture, compare
from pipeline.models.checkpoints import load_state
from pipeline.models.e4e import E4E, PREFIX, Encoder4Editing

LAYOUT = "e4e_ffhq_encode"
VECTOR_TOL = 1e-4


def applies(fixture: Fixture) -> bool:
    return (fixture.dir / "e4e.npz").is_file()


def checks(fixture: Fixture) -> Iterator[Check]:
    cfg = fixture.meta["e4e"]["config"]
    encoder = Encoder4Editing(cfg["num_layers"], cfg["mode"], cfg["stylegan_size"])
    constructed = {PREFIX + k: v for k, v in encoder.state_dict().items()}
    weights = fixture.weights(LAYOUT, constructed)
    load_state(encoder, {k[len(PREFIX):]: v for k, v in weights.items() if k.startswith(PREFIX)},
               f"golden {LAYOUT}")
    e4e = E4E(encoder, weights["latent_avg"]).to(fixture.device).eval()
    data = fixture.npz("e4e")
    yield compare("e4e latent_avg", e4e.latent_avg, data["latent_avg"], 0.0)
    x = torch.from_numpy(data["x"]).to(fixture.device)
    for layout in ("contiguous", "channels_last"):
        e4e.set_channels_last(layout == "channels_last")
        codes = e4e(x)
        yield compare(f"e4e[{layout}] codes_raw", codes - e4e.latent_avg, data["codes_raw"], VECTOR_TOL)
        yield compare(f"e4e[{layout}] codes", codes, data["codes"], VECTOR_TOL)
