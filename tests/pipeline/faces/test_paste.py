"""Paste-back: geometry (inverse of the alignment), untouched pixels outside, no seam, batching."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.faces.align import align_crop
from pipeline.faces.paste import face_mask, paste_back, paste_back_many, paste_faces
from tests.pipeline.images import golden_face, noise_image


@pytest.fixture(scope="module")
def golden():
    return golden_face()


def _face_coords(quad: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """For every photo pixel, its position (u, v) in the aligned face, [0, 1] inside the quad."""
    y, x = np.mgrid[: size[1], : size[0]]
    axes = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)
    return (np.stack([x - quad[0, 0], y - quad[0, 1]], axis=-1) @ np.linalg.inv(axes).T)


def _rotated_quad(center, half, degrees) -> np.ndarray:
    t = np.radians(degrees)
    x = np.array([np.cos(t), np.sin(t)]) * half
    y = np.array([-np.sin(t), np.cos(t)]) * half
    c = np.asarray(center, dtype=np.float64)
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def test_size_kept_inside_changed_outside_identical():
    photo = noise_image(400, 300, seed=1)
    quad = _rotated_quad((210, 140), 80, 20)
    face = Image.new("RGB", (256, 256), (255, 0, 255))
    out = paste_back(photo, face, quad)
    assert out.size == photo.size and out.mode == "RGB"
    before, after = np.asarray(photo), np.asarray(out)
    uv = _face_coords(quad, photo.size)
    outside = (uv < 0).any(-1) | (uv > 1).any(-1)
    assert np.array_equal(before[outside], after[outside])
    core = (np.abs(uv - 0.5) < 0.3).all(-1)
    assert np.all(after[core] == (255, 0, 255))
    assert np.array_equal(np.asarray(photo), before), "the input photo must not be modified"


def test_unedited_aligned_crop_pastes_back_onto_itself(golden):
    photo, ref = golden
    quad = ref["quad"]
    uv = _face_coords(quad, photo.size)
    core = (np.abs(uv - 0.5) < 0.35).all(-1)
    for output_size, transform_size in ((1024, 4096), (256, 256)):
        crop = align_crop(photo, quad, output_size, transform_size)
        out = np.asarray(paste_back(photo, crop, quad)).astype(int)
        diff = np.abs(out - np.asarray(photo).astype(int))[core]
        # Resampling twice blurs this sharp photo (measured 1.2-1.6); half a pixel off gives 6.5.
        assert diff.mean() < 2.5, (output_size, diff.mean())
        # align_crop truncates to 8 bits like the reference (-0.5 levels); paste-back must add no more.
        assert abs((out - np.asarray(photo).astype(int))[core].mean()) < 0.8


def test_geometry_is_the_inverse_of_the_alignment():
    """Paste a face rendered analytically from a ramp photo: the ramp comes back in place at any rotation.

    Alignment convention (``align_crop``, checked against the golden crops): face pixel (i, j) of an S-pixel
    face shows photo point ``q0 + ex * (i + 0.5) / S + ey * (j + 0.5) / S``, pixel centres at integers.
    """
    size, slope = (400, 300), np.array([0.5, 0.6])
    y, x = np.mgrid[: size[1], : size[0]]
    ramp = Image.fromarray(np.rint(np.stack([x * slope[0] + 20, y * slope[1] + 20, np.full_like(x, 90.0)],
                                            -1)).astype(np.uint8))
    for degrees in (0, 33, -120):
        quad = _rotated_quad((200, 150), 70, degrees)
        s = 256
        j, i = np.mgrid[:s, :s]
        points = (quad[0] + np.multiply.outer((i + 0.5) / s, quad[3] - quad[0])
                  + np.multiply.outer((j + 0.5) / s, quad[1] - quad[0]))
        face = np.rint(np.concatenate([points * slope + 20, np.full((s, s, 1), 90.0)], -1)).astype(np.uint8)
        out = np.asarray(paste_back(ramp, Image.fromarray(face), quad)).astype(float)
        core = (np.abs(_face_coords(quad, size) - 0.5) < 0.35).all(-1)
        shift = (out - np.asarray(ramp))[core][:, :2].mean(0) / slope    # in photo pixels
        assert np.all(np.abs(shift) < 0.2), (degrees, shift)


def test_no_seam():
    photo = Image.new("RGB", (400, 400), (0, 0, 0))
    quad = _rotated_quad((200, 200), 150, 0)
    out = np.asarray(paste_back(photo, Image.new("RGB", (512, 512), (255, 255, 255)), quad, feather=0.1))
    row = out[200, :, 0].astype(int)
    steps = np.abs(np.diff(row))
    # Falloff over 10 % of a 300 px quad = 30 px; smoothstep peaks at 1.5x the mean slope: ~13 levels a pixel.
    assert steps.max() <= 16, steps.max()
    assert row[200] == 255 and row[45] == 0 and row[355] == 0
    assert np.all(np.diff(row[:200]) >= 0) and np.all(np.diff(row[200:]) <= 0)


def test_many_equals_one_at_a_time():
    photo = noise_image(300, 240, seed=2)
    quad = _rotated_quad((150, 120), 60, -15)
    faces = [noise_image(128, 128, seed=s) for s in (3, 4, 5)]
    many = paste_back_many(photo, faces, quad)
    assert len(many) == 3
    for face, got in zip(faces, many, strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(paste_back(photo, face, quad)))


def test_quad_partly_or_fully_outside_the_photo():
    photo = noise_image(200, 150, seed=6)
    face = Image.new("RGB", (64, 64), (0, 255, 0))
    corner = paste_back(photo, face, _rotated_quad((10, 10), 40, 0))
    assert corner.size == photo.size
    assert tuple(np.asarray(corner)[5, 5]) == (0, 255, 0)
    away = paste_back(photo, face, _rotated_quad((1000, 1000), 40, 0))
    assert np.array_equal(np.asarray(away), np.asarray(photo))


def test_mask_shape():
    mask = np.asarray(face_mask(200, 0.1)).astype(int)
    assert mask.shape == (200, 200)
    assert mask[100, 100] == 255 and mask[0, 0] == 0 and mask[100, 0] == 0 and mask[0, 100] == 0
    assert mask[100, 30] == 255                       # full strength well inside the edge
    assert np.array_equal(mask, mask.T) and np.array_equal(mask, mask[::-1])


def test_rejects_bad_inputs():
    photo = noise_image(100, 100)
    with pytest.raises(ValueError):
        paste_back(photo, Image.new("RGB", (64, 32)), _rotated_quad((50, 50), 20, 0))
    with pytest.raises(ValueError):
        paste_back(photo, Image.new("RGB", (64, 64)), np.zeros((3, 2)))
    with pytest.raises(ValueError):
        face_mask(64, 0.0)


def test_big_photo_only_touches_the_face_box():
    """A 12 MP photo: every pixel outside the quad's bounding box is identical."""
    photo = Image.new("RGB", (4000, 3000), (10, 20, 30))
    ImageDraw.Draw(photo).rectangle((0, 0, 3999, 99), fill=(200, 0, 0))
    quad = _rotated_quad((2000, 1500), 500, 12)
    out = np.asarray(paste_back(photo, noise_image(1024, 1024, seed=7), quad))
    x0, y0 = np.floor(quad.min(0)).astype(int)
    x1, y1 = np.ceil(quad.max(0)).astype(int) + 1
    before = np.asarray(photo)
    changed = np.argwhere((out != before).any(-1))
    assert len(changed) > 0
    assert changed[:, 0].min() >= y0 and changed[:, 0].max() < y1
    assert changed[:, 1].min() >= x0 and changed[:, 1].max() < x1


# --- several faces in one photo --------------------------------------------------------------------------------

def _support(photo_size, quad) -> tuple[np.ndarray, np.ndarray]:
    """(the core of a 128 px face: its mask is full; anywhere its mask touches), from a white face on black."""
    white = np.asarray(paste_back(Image.new("RGB", photo_size), Image.new("RGB", (128, 128), (255,) * 3), quad))[..., 0]
    return white == 255, white > 0


@pytest.fixture(scope="module")
def overlapping():
    """Two faces whose crops overlap by a third of a side, turned differently, on a noise photo."""
    photo = noise_image(440, 260, seed=5)
    quads = [_rotated_quad((130, 130), 90, 10), _rotated_quad((285, 125), 85, -15)]
    rng = np.random.default_rng(6)
    faces = [Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for _ in quads]
    return photo, faces, quads


def test_overlapping_faces_each_keep_their_edit(overlapping):
    photo, faces, quads = overlapping
    out = np.asarray(paste_faces(photo, faces, quads))
    (core_a, touched_a), (core_b, touched_b) = (_support(photo.size, q) for q in quads)
    assert (touched_a & touched_b).sum() > 1500 and not (core_a & core_b).any()   # crops overlap, cores do not
    for face, quad, core in zip(faces, quads, (core_a, core_b), strict=True):
        alone = np.asarray(paste_back(photo, face, quad))
        assert np.array_equal(out[core], alone[core])
    outside = ~(touched_a | touched_b)
    assert np.array_equal(out[outside], np.asarray(photo)[outside])
    # pasting one after the other would erase the first face's edit where the second one's mask reaches
    sequential = np.asarray(paste_back(paste_back(photo, faces[0], quads[0]), faces[1], quads[1]))
    alone_a = np.asarray(paste_back(photo, faces[0], quads[0]))
    assert not np.array_equal(sequential[core_a], alone_a[core_a])


def test_overlapping_faces_blend_without_a_seam():
    """Flat faces (red, blue) on a flat grey photo, their masks overlapping over ~16 px: red turns into blue
    over several pixels, never in one step (a cut between the faces is a step of 255)."""
    photo = Image.new("RGB", (440, 260), (128, 128, 128))
    quads = [_rotated_quad((130, 130), 90, 10), _rotated_quad((285, 125), 85, -15)]
    faces = [Image.new("RGB", (128, 128), (255, 0, 0)), Image.new("RGB", (128, 128), (0, 0, 255))]
    out = np.asarray(paste_faces(photo, faces, quads)).astype(int)
    steps = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    assert steps <= 96, steps
    assert list(out[130, 130]) == [255, 0, 0] and list(out[125, 285]) == [0, 0, 255]


def test_one_face_is_paste_back_and_no_face_inside_is_the_photo(overlapping):
    photo, faces, quads = overlapping
    assert np.array_equal(np.asarray(paste_faces(photo, faces[:1], quads[:1])),
                          np.asarray(paste_back(photo, faces[0], quads[0])))
    far = [q + 5000 for q in quads]
    assert np.array_equal(np.asarray(paste_faces(photo, faces, far)), np.asarray(photo))
    with pytest.raises(ValueError):
        paste_faces(photo, faces, quads[:1])
