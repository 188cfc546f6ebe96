"""The e4e encoder: official-format and own checkpoints load, bad ones are refused naming the key, and the
golden fixture matches the reference implementation."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from pipeline.errors import MODEL_INVALID, PipelineError
from pipeline.models.e4e import E4E, Encoder4Editing, load_encoder, save_encoder
from pipeline.models.stylegan2 import Generator

GOLDEN = Path(os.environ.get("GOLDEN_DIR", Path(__file__).resolve().parents[4] / "shared" / "golden"))
needs_golden = pytest.mark.skipif(not (GOLDEN / "meta.json").is_file(), reason=f"no golden fixture at {GOLDEN}")
# width 16 scales IR-SE-50 down 16×; stylegan_size 16 gives 6 W+ rows (coarse and middle heads)
TINY = {"num_layers": 50, "mode": "ir_se", "stylegan_size": 16, "width": 16}


@pytest.fixture(scope="module")
def tiny() -> E4E:
    torch.manual_seed(0)
    encoder = Encoder4Editing(**TINY)
    with torch.no_grad():  # non-trivial batch-norm statistics, so that eval mode matters
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return E4E(encoder, torch.randn(8 * TINY["width"])).eval()


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture(scope="module")
def raw(tiny, photo) -> torch.Tensor:
    """The tiny encoder's output on ``photo``, computed once (the models under test are compared to it)."""
    with torch.inference_mode():
        return tiny.encoder(photo)


@torch.inference_mode()
def test_codes_shape_and_latent_avg(tiny, photo, raw):
    assert raw.shape == (2, 6, 128) and tiny.encoder.style_count == 6
    torch.testing.assert_close(tiny(photo), raw + tiny.latent_avg, rtol=0, atol=0)
    # every row gets its own delta on top of the shared base w (inference stage: all deltas on)
    assert (raw[:, 1:] - raw[:, :1]).abs().amin(dim=2).gt(0).all()


@torch.inference_mode()
@pytest.mark.parametrize("first", [0, 1, 3, 5, 6])
@pytest.mark.parametrize("per_row_average", [False, True])
def test_staged_codes_are_forward_split_in_two(tiny, photo, first, per_row_average):
    """The preview's rows now and the rest later: bit-identical to one forward, whichever the split (coarse,
    middle and fine heads on either side) and whichever shape the checkpoint's latent_avg has."""
    model = tiny if not per_row_average else E4E(tiny.encoder, torch.randn(6, 8 * TINY["width"])).eval()
    now, rest = model.staged(photo, first)
    later = rest()
    assert now.shape == (2, first, 128) and later.shape == (2, 6 - first, 128)
    torch.testing.assert_close(torch.cat([now, later], dim=1), model(photo), rtol=0, atol=0)


def test_staged_refuses_a_split_outside_the_rows(tiny, photo):
    with pytest.raises(ValueError, match="within 0..6"):
        tiny.staged(photo, 7)


@torch.inference_mode()
def test_own_checkpoint_round_trip(tiny, photo, raw, tmp_path):
    path = tmp_path / "e4e.pt"
    save_encoder(path, tiny, opts={"stylegan_size": TINY["stylegan_size"], "encoder_type": "Encoder4Editing"})
    loaded = load_encoder(path, channels_last=False)
    enc = loaded.encoder
    assert (enc.num_layers, enc.mode, enc.stylegan_size, enc.width) == tuple(TINY.values())
    assert torch.equal(loaded.latent_avg, tiny.latent_avg)
    assert torch.equal(loaded.encoder(photo), raw)
    nhwc = load_encoder(path)  # the default layout: same function, other kernels
    assert nhwc.channels_last
    codes = nhwc(photo)
    assert float((codes - (raw + tiny.latent_avg)).abs().max() / codes.abs().max()) < 1e-5


@torch.inference_mode()
def test_official_layout_with_namespace_opts_and_decoder(tiny, photo, raw, tmp_path):
    """The official file pickles an argparse.Namespace and carries the generator as ``decoder.*``."""
    decoder = Generator(16, style_dim=128, n_mlp=1, channels={4: 8, 8: 8, 16: 8})
    state = {f"encoder.{k}": v for k, v in tiny.encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    latent_avg = torch.randn(6, 128)  # the official file stores it repeated per W+ row
    opts = argparse.Namespace(encoder_type="Encoder4Editing", stylegan_size=16, start_from_latent_avg=True)
    path = tmp_path / "e4e_ffhq_encode.pt"
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": opts}, path)
    loaded = load_encoder(path, channels_last=False)
    torch.testing.assert_close(loaded(photo), raw + latent_avg, rtol=0, atol=0)


@pytest.mark.parametrize(("edit", "named"), [
    (lambda c: c["state_dict"].pop("encoder.body.4.res_layer.1.weight"), "missing keys: body.4.res_layer.1.weight"),
    (lambda c: c["state_dict"].update({"encoder.latlayer1.weight": torch.zeros(128, 32, 3, 3)}),
     "latlayer1.weight [128, 32, 3, 3] (expected [128, 64, 1, 1])"),
    (lambda c: c["state_dict"].update({"encoder.extra": torch.zeros(1)}), "unexpected keys: extra"),
    (lambda c: c.update({"latent_avg": torch.zeros(5, 128)}), "latent_avg must be [128] or [6,128]"),
    (lambda c: c.pop("latent_avg"), "latent_avg"),
    (lambda c: c.pop("state_dict"), "no 'state_dict'"),
    (lambda c: c["state_dict"].pop("encoder.styles.5.linear.weight"), "style heads"),
])
def test_a_mismatched_checkpoint_is_model_invalid(tiny, tmp_path, edit, named):
    ckpt = {"state_dict": {f"encoder.{k}": v.clone() for k, v in tiny.encoder.state_dict().items()},
            "latent_avg": tiny.latent_avg.clone(), "opts": {}}
    edit(ckpt)
    path = tmp_path / "bad.pt"
    torch.save(ckpt, path)
    with pytest.raises(PipelineError) as err:
        load_encoder(path)
    assert err.value.code == MODEL_INVALID
    assert named in err.value.message and str(path) in err.value.message


class Payload:
    """Any class but argparse.Namespace: the loader must not unpickle it."""


def test_other_pickled_classes_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "latent_avg": torch.zeros(512), "opts": Payload()}, path)
    with pytest.raises(PipelineError) as err:
        load_encoder(path)
    assert err.value.code == MODEL_INVALID


@needs_golden
def test_golden_e4e(assert_golden):
    assert_golden("e4e")
