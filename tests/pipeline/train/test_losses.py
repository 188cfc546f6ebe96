"""The e4e losses: the W-delta term by hand, the LPIPS loader on files in the official key layouts."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.train.losses import ALEX_CHANNELS, LPIPS_BACKBONE, LPIPS_LINEAR, delta_loss, l2_loss, load_lpips


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
