"""The Editor with StyleFeatureEditor inversions, on the development bundle: invert, store, edit, refuse what
SFE cannot do; the CLI's ``--inversion sfe``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline import Inversion, PipelineError
from pipeline.edit.inversion import FEATURE_DTYPE
from pipeline.errors import INVALID_PARAMETER
from pipeline.models.sfe import FEATURE_RESOLUTION


@pytest.fixture(scope="module")
def sfe_inversion(dev_editor, face_bytes) -> Inversion:
    return dev_editor.invert(face_bytes, inversion="sfe")


def test_an_sfe_inversion_holds_both_codes_and_the_fused_feature(dev_editor, sfe_inversion, face_bytes):
    g = dev_editor.models.generator
    inv = sfe_inversion
    assert inv.inverter == "sfe" and inv.versions["sfe"] == dev_editor.versions["sfe"]
    assert inv.codes.shape == inv.sfe_codes.shape == (g.n_latent, g.style_dim)
    assert inv.feature.shape == (g.channels[FEATURE_RESOLUTION], FEATURE_RESOLUTION, FEATURE_RESOLUTION)
    assert inv.feature.dtype == FEATURE_DTYPE and not np.array_equal(inv.codes, inv.sfe_codes)
    # the same face and quad as an e4e inversion of the photo
    e4e = dev_editor.invert(face_bytes)
    np.testing.assert_allclose(inv.quad, e4e.quad)
    blob = inv.to_bytes()
    back = Inversion.from_bytes(blob)
    assert back.inverter == "sfe" and back.photo is None
    assert np.array_equal(back.sfe_codes, inv.sfe_codes) and np.array_equal(back.feature, inv.feature)
    assert np.array_equal(back.codes, inv.codes)
    assert len(blob) < inv.feature.nbytes + 3 * inv.codes.nbytes + 4096  # the feature dominates, in float16
    assert Inversion.from_bytes(e4e.to_bytes()).inverter == "e4e"


def test_an_sfe_edit_renders_full_photos_that_the_strength_changes(dev_editor, sfe_inversion, face_bytes):
    photos = dev_editor.edit(sfe_inversion, "a face", "a smiling face", [0.0, 4.0], photo=face_bytes)
    size = Image.open(io.BytesIO(face_bytes)).size
    assert [p.size for p in photos] == [size, size]
    plain, edited = (np.asarray(p, dtype=np.int16) for p in photos)
    assert np.abs(plain - edited).max() > 0


def test_an_sfe_edit_previews_after_its_injected_feature(dev_editor, sfe_inversion, face_bytes):
    """SFE's feature replaces a block below (here: at) the preview's: the preview and the outputs are those of
    the injected render, the outputs bit for bit those without a preview."""
    from pipeline.edit.editor import Change

    previews = []
    change = [Change("a face", "a smiling face")]
    outputs = dev_editor.render(face_bytes, [sfe_inversion], change, [2.0], on_preview=previews.append)
    plain = dev_editor.render(face_bytes, [sfe_inversion], change, [2.0])
    assert len(previews) == 1 and previews[0].index == 0
    assert np.array_equal(np.asarray(outputs[0].image), np.asarray(plain[0].image))
    full = np.asarray(outputs[0].image.resize(previews[0].image.size), dtype=np.float32)
    assert np.abs(np.asarray(previews[0].image, dtype=np.float32) - full).mean() < 6


@pytest.mark.parametrize("kwargs", [{"mode": "optimize", "steps": 1}])
def test_what_sfe_cannot_do_is_refused(dev_editor, sfe_inversion, face_bytes, kwargs):
    from pipeline.edit.editor import Change

    with pytest.raises(PipelineError) as err:
        dev_editor.render(face_bytes, [sfe_inversion], [Change("a face", "a smiling face")], [1.0], **kwargs)
    assert err.value.code == INVALID_PARAMETER and "e4e" in err.value.message


def test_one_render_takes_one_kind_of_inversion(dev_editor, sfe_inversion, face_bytes):
    from dataclasses import replace

    from pipeline.edit.editor import Change

    other = replace(dev_editor.invert(face_bytes), face_index=1)
    with pytest.raises(PipelineError) as err:
        dev_editor.render(face_bytes, [sfe_inversion, other], [Change("a face", "a smiling face")], [1.0])
    assert err.value.code == INVALID_PARAMETER and "one inversion" in err.value.message


def test_an_inversion_lacking_its_sfe_fields_is_refused():
    with pytest.raises(ValueError, match="sfe_codes and a feature"):
        Inversion(codes=np.zeros((14, 8)), quad=np.zeros((4, 2)), qsize=1.0, n_faces=1, note="",
                  photo_size=(8, 8), inverter="sfe")


def test_cli_edit_with_inversion_sfe(dev_bundle, face_bytes, tmp_path, capsys):
    from pipeline.cli import main

    photo = tmp_path / "face.png"
    photo.write_bytes(face_bytes)
    out = tmp_path / "smile.png"
    code = main(["edit", str(photo), "--neutral", "a face", "--target", "a smiling face", "--alpha", "2",
                 "--inversion", "sfe", "--bundle", str(dev_bundle.dir), "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr()
    assert Image.open(out).size == Image.open(photo).size
