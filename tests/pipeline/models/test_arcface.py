"""ArcFace: ``model_ir_se50.pt``'s layout loads with the key check, equal faces embed alike, a file of another
layout is refused naming it."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models.arcface import ArcFace, identity_similarity, load_arcface


def test_arcface_loads_model_ir_se50_layout_and_compares_faces(tmp_path):
    torch.manual_seed(0)
    state = ArcFace(width=16).eval().state_dict()
    assert {"input_layer.0.weight", "body.23.res_layer.5.fc2.weight", "output_layer.3.weight",
            "output_layer.4.running_var"} <= state.keys()
    torch.save(state, tmp_path / "model_ir_se50.pt")
    model = load_arcface(tmp_path / "model_ir_se50.pt")
    faces = torch.rand(2, 3, 256, 256) * 2 - 1
    same = identity_similarity(model, faces, faces)
    assert same.shape == (2,) and torch.allclose(same, torch.ones(2), atol=1e-5)
    assert (identity_similarity(model, faces, faces.flip(0)) < 0.999).all()
    torch.save({"input_layer.0.weight": state["input_layer.0.weight"]}, tmp_path / "bad.pt")
    with pytest.raises(PipelineError, match="not an ArcFace"):
        load_arcface(tmp_path / "bad.pt")
