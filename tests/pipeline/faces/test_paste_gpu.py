"""The on-device paste (``pipeline.faces.paste_gpu``), run on the CPU: the same photo as ``pipeline.faces.paste`` up to its
resampling filters (one face and a group of overlapping faces), the same geometry and untouched pixels, and the
dispatch of ``paste_rendered`` and ``paste_group``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.faces.paste import paste_back_many, paste_faces
from pipeline.faces.paste_gpu import (
    paste_faces_on_device,
    paste_group,
    paste_on_device,
    paste_rendered,
    to_uint8,
)
from tests.pipeline.faces.test_paste import _rotated_quad
from tests.pipeline.images import noise_image


def _faces(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """Smooth random faces in [-1.2, 1.2] (beyond [-1, 1], as renders are): low-frequency noise upsampled."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, side // 16, side // 16, generator=g) * 2.4 - 1.2
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)


@pytest.mark.parametrize(("side", "half", "degrees"), [(256, 80, 20), (1024, 60, -35), (256, 200, 5)])
def test_same_photo_as_the_cpu_paste_up_to_resampling(side, half, degrees):
    photo = noise_image(400, 300, seed=2)
    quad = _rotated_quad((210, 140), half, degrees)  # the last one is partly outside the photo
    faces = _faces(2, side)
    ours = paste_on_device(photo, faces, quad)
    ref = paste_back_many(photo, [Image.fromarray(f) for f in to_uint8(faces)], quad)
    for a, b in zip(ours, ref, strict=True):
        assert a.size == photo.size and a.mode == "RGB"
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        assert diff.mean() < 0.15 and diff.max() <= 12, (diff.mean(), diff.max())
        changed = np.any(np.asarray(a) != np.asarray(photo), axis=-1)
        changed_ref = np.any(np.asarray(b) != np.asarray(photo), axis=-1)
        assert changed.sum() > 1000 and (changed & ~changed_ref).sum() < 0.01 * changed.sum()


def test_pixels_outside_the_box_are_the_photos():
    photo = noise_image(500, 400, seed=3)
    quad = _rotated_quad((150, 120), 50, 10)
    out = np.asarray(paste_on_device(photo, _faces(1, 256), quad)[0])
    before = np.asarray(photo)
    assert np.array_equal(out[:, 230:], before[:, 230:]) and np.array_equal(out[210:], before[210:])


def test_quad_outside_the_photo_gives_copies():
    photo = noise_image(200, 100, seed=4)
    out = paste_on_device(photo, _faces(2, 256), _rotated_quad((900, 900), 50, 0))
    assert len(out) == 2 and all(np.array_equal(np.asarray(o), np.asarray(photo)) for o in out)
    assert out[0] is not photo


def test_rejects_faces_that_are_not_square_rgb_batches():
    photo = noise_image(200, 100, seed=5)
    with pytest.raises(ValueError, match=r"\[B, 3, S, S\]"):
        paste_on_device(photo, torch.zeros(1, 3, 256, 128), _rotated_quad((100, 50), 30, 0))


def test_rendered_faces_on_the_cpu_take_the_cpu_paste():
    photo = noise_image(300, 300, seed=6)
    quad = _rotated_quad((150, 150), 70, 15)
    faces = _faces(2, 256, seed=7)
    ours = paste_rendered(photo, faces, quad)
    ref = paste_back_many(photo, [Image.fromarray(f) for f in to_uint8(faces)], quad)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, ref, strict=True))


def _close(ours: Image.Image, ref: Image.Image, photo: Image.Image) -> None:
    """Within the resampling filters' difference: a level or two where faces are, never more than 12."""
    diff = np.abs(np.asarray(ours, np.int16) - np.asarray(ref, np.int16))
    touched = np.any((np.asarray(ours) != np.asarray(photo)) | (np.asarray(ref) != np.asarray(photo)), axis=-1)
    assert diff[touched].mean() < 1.0 and diff.max() <= 12, (diff[touched].mean(), diff.max())
    changed = np.any(np.asarray(ours) != np.asarray(photo), axis=-1)
    changed_ref = np.any(np.asarray(ref) != np.asarray(photo), axis=-1)
    assert changed.sum() > 1000 and (changed & ~changed_ref).sum() < 0.01 * changed.sum()


@pytest.mark.parametrize("side", [256, 1024])
def test_a_group_is_the_cpu_group_paste_up_to_resampling(side):
    """Overlapping faces turned differently: the device's blend is ``paste_faces``' (the reference)."""
    photo = noise_image(440, 260, seed=5)
    quads = [_rotated_quad((130, 130), 90, 10), _rotated_quad((285, 125), 85, -15)]
    faces = _faces(2, side, seed=3)
    ours = paste_faces_on_device(photo, faces, quads)
    ref = paste_faces(photo, [Image.fromarray(f) for f in to_uint8(faces)], quads)
    assert ours.size == photo.size and ours.mode == "RGB"
    _close(ours, ref, photo)
    far = [q + 5000 for q in quads]
    assert np.array_equal(np.asarray(paste_faces_on_device(photo, faces, far)), np.asarray(photo))
    with pytest.raises(ValueError, match="2 faces and 1 quads"):
        paste_faces_on_device(photo, faces, quads[:1])


def test_one_face_of_a_group_is_the_single_paste():
    photo = noise_image(400, 300, seed=2)
    quad = _rotated_quad((210, 140), 80, 20)
    faces = _faces(1, 256)
    assert np.array_equal(np.asarray(paste_faces_on_device(photo, faces, [quad])),
                          np.asarray(paste_on_device(photo, faces, quad)[0]))


def test_paste_group_takes_the_cpu_reference_for_cpu_faces():
    """CPU tensors go through OpenCV/Pillow (``paste_faces``), exactly; GPU ones through the device paste."""
    photo = noise_image(440, 260, seed=5)
    quads = [_rotated_quad((130, 130), 90, 10), _rotated_quad((285, 125), 85, -15)]
    faces = _faces(2, 256, seed=4)
    assert np.array_equal(np.asarray(paste_group(photo, faces, quads)),
                          np.asarray(paste_faces(photo, [Image.fromarray(f) for f in to_uint8(faces)], quads)))

