"""bench/ports.py: the plain ports compute what the fast paths compute, and the benchmark reports every number."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.models import QUICK, build_models
from bench.ports import (
    PHONE_FACE_PX,
    PORT_KEYS,
    bench_ports,
    paste_plain,
    phone_scene,
    photo_png,
    plain_encoder,
    ports_markdown,
    served_encoder,
)
from bench.timing import Timing
from pipeline.faces.paste import paste_back


def _scene(size=(300, 400)) -> tuple[Image.Image, Image.Image, np.ndarray]:
    """A smooth photo, a smooth face of the opposite colours and a tilted quad inside the photo."""
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    photo = np.stack([xx * 255 // size[0], yy * 255 // size[1], np.full_like(xx, 90)], -1).astype(np.uint8)
    fy, fx = np.mgrid[0:128, 0:128]
    face = np.stack([255 - fx * 2, 255 - fy * 2, np.full_like(fx, 200)], -1).astype(np.uint8)
    c, h, t = np.array([150.0, 190.0]), 60.0, 0.2
    ex, ey = h * np.array([np.cos(t), np.sin(t)]), h * np.array([-np.sin(t), np.cos(t)])
    quad = np.array([c - ex - ey, c - ex + ey, c + ex + ey, c + ex - ey])
    return Image.fromarray(photo), Image.fromarray(face), quad


def test_plain_paste_is_the_same_blend():
    photo, face, quad = _scene()
    ours = np.asarray(paste_back(photo, face, quad)).astype(int)
    plain = np.asarray(paste_plain(photo, face, quad)).astype(int)
    before = np.asarray(photo).astype(int)
    touched = (ours != before).any(-1) | (plain != before).any(-1)
    assert touched.sum() > 5000  # the face went in
    diff = np.abs(ours - plain)
    assert diff[touched].mean() < 1.0 and diff.max() <= 8, (diff[touched].mean(), diff.max())
    assert np.array_equal(ours[~touched], plain[~touched])


def test_phone_scene_puts_the_face_at_the_asked_size():
    photo, _, quad = _scene()
    scene, scene_quad = phone_scene(photo, quad, size=(600, 800), face_px=240)
    assert scene.size == (600, 800)
    assert np.hypot(*(scene_quad[3] - scene_quad[0])) == pytest.approx(240)
    assert np.allclose(scene_quad.mean(0), (300, 400), atol=1)
    # the photo's pixel under the quad's centre is where the scene's quad centre is
    x, y = np.rint(quad.mean(0)).astype(int)
    sx, sy = np.rint(scene_quad.mean(0)).astype(int)
    assert np.abs(np.asarray(scene)[sy, sx].astype(int) - np.asarray(photo)[y, x]).max() <= 8


def test_plain_and_served_encoders_compute_the_same_codes():
    models = build_models(QUICK, torch.device("cpu"))
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    plain, served = plain_encoder(models.encoder), served_encoder(models.encoder)
    assert not plain.channels_last and served.channels_last
    with torch.no_grad():
        a, b = plain(x), served(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bench_ports_reports_every_number():
    models = build_models(QUICK, torch.device("cpu"))
    photo, face, quad = _scene()
    result = bench_ports(models, face.resize((256, 256)), photo_png(photo), quad, repeats=2, budget=5.0)
    for key in PORT_KEYS:
        assert key in result
    for key in ("invert_fast_s", "invert_ref_s", "paste_s", "paste_ref_s"):
        assert isinstance(result[key], Timing) and result[key].n >= 1 and result[key].median > 0
    assert result["invert_fast_s"].n == result["invert_ref_s"].n  # measured in pairs
    assert result["invert_fast_over_ref"] > 0 and result["paste_over_ref"] > 0
    assert result["paste_face_px"] == pytest.approx(PHONE_FACE_PX)
    assert result["paste_photo_megapixels"] == pytest.approx(12.0)

    device = {k: (v.median if isinstance(v, Timing) else v) for k, v in result.items()}
    lines = ports_markdown({"cpu": device, "cuda": {"invert_s": 1.0}})
    table = [line for line in lines if line.startswith("| cpu |")]
    assert len(table) == 1 and f"{device['paste_over_ref']:.2f}" in table[0]
    assert not any(line.startswith("| cuda |") for line in lines)
    assert ports_markdown({"cpu": {"invert_s": 1.0}}) == []
