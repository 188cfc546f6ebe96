"""CLIP checks: tokenizer, text and image features, template-ensembled text directions.

The architecture comes from the fixture's ``clip_vit_b32`` layout shapes (the same inference the loader uses on
a real checkpoint), the weights from the fill rule.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pipeline.edit.directions import direction_between, text_embeddings
from pipeline.golden import Check, Fixture, compare, exact
from pipeline.models.clip_model import build_clip, image_features, text_features, tokenize

TOL = 1e-4


def build_fixture_clip(fixture: Fixture):
    """CLIP with the fixture's architecture and fill-rule weights, float32, on the fixture's device."""
    from clip.model import build_model

    layout = fixture.layouts["clip_vit_b32"]
    # A weightless skeleton gives the constructed state dict (dtypes) the fill rule asks for.
    with torch.device("meta"):
        skeleton = build_model({k: torch.empty(s) for k, s in layout.items()})
    weights = fixture.weights("clip_vit_b32", skeleton.state_dict())
    return build_clip(weights).to(fixture.device)


def applies(fixture: Fixture) -> bool:
    return (fixture.dir / "clip_text_direction.npz").is_file()


def checks(fixture: Fixture) -> Iterator[Check]:
    meta = fixture.meta["clip_text_direction"]
    ref = fixture.npz("clip_text_direction")
    model = build_fixture_clip(fixture)

    sample = meta["sample_text"]
    yield exact("clip sample_tokens", tokenize(model, [sample]), ref["sample_tokens"])
    yield compare("clip sample_text_features", text_features(model, [sample]), ref["sample_text_features"], TOL)
    pixels = torch.from_numpy(ref["image_input"]).to(fixture.device)
    yield compare("clip image_features", image_features(model, pixels), ref["image_features"], TOL)

    templates = meta["templates"]
    if len(templates) != meta["n_templates"]:
        yield Check("clip templates count", float("inf"), 0.0, f"{len(templates)} != {meta['n_templates']}")
    for i, pair in enumerate(meta["pairs"]):
        target, neutral = text_embeddings(model, [pair["target"], pair["neutral"]], templates)
        yield compare(f"clip pair{i} target_embedding", target, ref[f"pair{i}_target_embedding"], TOL)
        yield compare(f"clip pair{i} neutral_embedding", neutral, ref[f"pair{i}_neutral_embedding"], TOL)
        # text_direction is text_embeddings (checked above) + direction_between: reuse, CLIP-B/32 is slow on CPU
        dt = direction_between(neutral, target, pair["neutral"], pair["target"])
        yield compare(f"clip pair{i} dt", dt, ref[f"pair{i}_dt"], TOL)
