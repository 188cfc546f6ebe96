"""The e4e losses: the W-delta term by hand, LPIPS and ArcFace loaders on files in the official key layouts."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.train.losses import (
    ALEX_CHANNELS,
    LPIPS_BACKBONE,
    LPIPS_LINEAR,
    ArcFace,
    delta_loss,
    identity_similarity,
    l2_loss,
    load_arcface,
    load_lpips,
)


def test_delta_loss_is_the_sum_of_row_distances_to_w0():
    codes = torch.zeros(2, 3, 4)
    codes[0, 1, 0], codes[0, 2, 1] = 3.0, 4.0   # sample 0: rows 1, 2 at distance 3 and 4 from row 0
    codes[1, :, :] = 7.0                        # sample 1: all rows equal
    assert delta_loss(codes).item() == pytest.approx((3 + 0) / 2 + (4 + 0) / 2)
    assert l2_loss(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)).item() == 1.0


def test_lpips_loads_the_official_files_and_is_zero_on_equal_images(tmp_path):
    from pipeline.train.losses import LPIPS

    # torchvision's ImageNet file has features.* (read) and classifier.* (ignored) keys
    trunk = {f"features.{k}": v for k, v in LPIPS().features.state_dict().items()}
    torch.save({**trunk, "classifier.1.weight": torch.zeros(4, 9216)}, tmp_path / LPIPS_BACKBONE)
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(ALEX_CHANNELS)}
    torch.save(lins, tmp_path / LPIPS_LINEAR)
    model = load_lpips(tmp_path)
    assert model.trained
    assert torch.equal(model.lins[2].weight, lins["lin2.model.1.weight"])
    assert torch.equal(model.features[3].weight, trunk["features.3.weight"])
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    assert model(x, x).abs().max().item() < 1e-6
    assert (model(x, y) > 0).all()
    del lins["lin4.model.1.weight"]
    torch.save(lins, tmp_path / LPIPS_LINEAR)
    with pytest.raises(PipelineError, match="missing keys"):
        load_lpips(tmp_path)
    assert not load_lpips(None).trained


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
