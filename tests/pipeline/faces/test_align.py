"""Face alignment: golden FFHQ numbers, detection (rotated, several, none, tiny faces), padding."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.faces.align import MIN_FACE_SIZE, Alignment, align_crop, face_quad
from pipeline.faces.align import align_face as align_faces_of
from pipeline.faces.detect import MEDIAPIPE_TO_68, find_faces, find_landmarks
from pipeline.faces.photo import load_photo
from tests.pipeline.images import golden_dir, golden_face, gradient_image, jpeg_bytes, noise_image


def align_face(image, **kwargs) -> Alignment:
    """Detect, then align (as the Editor does)."""
    return align_faces_of(image, find_faces(image), **kwargs)


@pytest.fixture(scope="module")
def golden():
    return golden_face()


def _quad_error(quad: np.ndarray, ref: np.ndarray, qsize: float) -> float:
    """Largest corner distance as a fraction of the quad size (the README's detector measure)."""
    return float(np.hypot(*(quad - ref).T).max() / qsize)


def _abs_diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))


def test_index_map_matches_the_fixture():
    import json

    path = golden_dir() / "meta.json"
    if not path.is_file():
        pytest.skip("golden fixtures not found")
    assert list(MEDIAPIPE_TO_68) == json.loads(path.read_text())["face_align"]["mediapipe_to_68"]


def test_quad_from_landmarks_matches_reference(golden):
    _, ref = golden
    quad, qsize = face_quad(ref["landmarks68"])
    assert np.abs(quad - ref["quad"]).max() <= 1e-6
    assert abs(qsize - float(ref["qsize"])) <= 1e-6


@pytest.mark.parametrize("name", ["aligned_256", "aligned_1024"])
def test_aligned_crops_match_reference(golden, name):
    photo, ref = golden
    settings = ref["settings"][name]
    crop = align_crop(photo, ref["quad"], settings["output_size"], settings["transform_size"])
    diff = _abs_diff(crop, Image.fromarray(ref[name]))
    assert diff.mean() <= 0.5 and diff.max() <= 16, (diff.mean(), diff.max())


def test_detector_quad_within_two_percent(golden):
    photo, ref = golden
    faces = find_landmarks(photo)
    assert len(faces) == 1
    assert faces[0].shape == (68, 2)
    quad, _ = face_quad(faces[0])
    assert _quad_error(quad, ref["quad"], float(ref["qsize"])) <= 0.02


def test_align_face_returns_the_alignment(golden):
    photo, ref = golden
    result = align_face(photo)
    assert isinstance(result, Alignment)
    assert result.crop.size == (256, 256) and result.crop.mode == "RGB"
    assert result.n_faces == 1 and result.note == ""
    assert result.landmarks.shape == (68, 2)
    assert _quad_error(result.quad, ref["quad"], float(ref["qsize"])) <= 0.02
    reference_crop = Image.fromarray(ref["aligned_256"])
    assert _abs_diff(result.crop, reference_crop).mean() < 3


@pytest.mark.parametrize("image", [noise_image(), gradient_image(), Image.new("RGB", (300, 200), (40, 40, 40)),
                                   Image.new("RGB", (1, 1)), Image.new("L", (5000, 10))],
                         ids=["noise", "gradient", "flat", "one-pixel", "grey-strip"])
def test_no_face(image):
    with pytest.raises(PipelineError) as err:
        align_face(image)
    assert err.value.code == "no_face"


def test_tiny_face_is_too_small(golden):
    photo, _ = golden
    small = photo.resize((150, 150), Image.Resampling.LANCZOS)   # the face's quad shrinks to ~51 px
    faces = find_landmarks(small)
    assert faces, "the tiny face should still be detected"
    assert face_quad(faces[0])[1] < MIN_FACE_SIZE
    with pytest.raises(PipelineError) as err:
        align_face(small)
    assert err.value.code == "face_too_small"


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_photo_aligns_to_the_same_crop(golden, orientation):
    photo, _ = golden
    # Store the pixels turned the other way and tag them: a viewer (and load_photo) shows them upright.
    undo = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    stored = photo.transpose(undo[orientation])
    upright = load_photo(jpeg_bytes(stored, orientation=orientation, quality=97))
    assert upright.size == photo.size
    expected = align_face(photo)
    result = align_face(upright)
    assert _quad_error(result.quad, expected.quad, expected.qsize) <= 0.02
    assert _abs_diff(result.crop, expected.crop).mean() < 4


def _unturn_points(points: np.ndarray, turn: Image.Transpose, size: tuple[int, int]) -> np.ndarray:
    """Pixel-centre coordinates in ``photo.transpose(turn)`` → coordinates in ``photo`` (of ``size``)."""
    w, h = size
    x, y = points[:, 0], points[:, 1]
    if turn == Image.Transpose.ROTATE_90:
        return np.stack([w - 1 - y, x], axis=1)
    if turn == Image.Transpose.ROTATE_270:
        return np.stack([y, h - 1 - x], axis=1)
    return np.stack([w - 1 - x, h - 1 - y], axis=1)


@pytest.mark.parametrize("turn", [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                  Image.Transpose.ROTATE_270], ids=["90", "180", "270"])
def test_sideways_pixels_without_exif_still_align(golden, turn):
    """A photo that lost its orientation tag: the face is found turned and the crop comes out upright."""
    photo, ref = golden
    result = align_face(photo.transpose(turn))
    assert result.n_faces == 1
    # Fitted on an upright view, so the same face quad up to the mesh's own jitter (~1-2 %); the whole-frame
    # mesh on the turned pixels is off by 6-130 %.
    quad = _unturn_points(result.quad, turn, photo.size)
    assert _quad_error(quad, ref["quad"], float(ref["qsize"])) <= 0.025
    # ... and the crop is upright: the reference crop turned by a quarter or a half differs by 74-82.
    assert _abs_diff(result.crop, Image.fromarray(ref["aligned_256"])).mean() < 15


def test_several_faces_edit_the_largest(golden):
    photo, _ = golden
    group = Image.new("RGB", (1100, 620), (90, 110, 130))
    group.paste(photo, (20, 50))
    group.paste(photo.resize((400, 400), Image.Resampling.LANCZOS), (640, 100))
    faces = find_landmarks(group)
    assert len(faces) == 2
    sizes = [face_quad(f)[1] for f in faces]
    assert sizes[0] > sizes[1]                        # largest first
    result = align_face(group)
    assert result.n_faces == 2
    assert result.note == "2 faces found; edited the largest"
    assert result.quad[:, 0].max() < 600              # the big face is the left one


def test_small_face_in_a_large_photo_is_found(golden):
    """A face ~10 % of the frame: too small for the face mesh's own detector, found by the full-range one."""
    photo, ref = golden
    scene = Image.new("RGB", (3000, 2000), (90, 120, 150))
    scene.paste(photo.resize((1024, 1024), Image.Resampling.LANCZOS), (1400, 500))
    faces = find_landmarks(scene)
    assert len(faces) == 1
    quad, _ = face_quad(faces[0])
    expected = ref["quad"] * 2 + (1400, 500) + 0.5     # a 2x resize maps pixel centres p to 2p + 0.5
    assert _quad_error(quad, expected, 2 * float(ref["qsize"])) <= 0.03


def test_padding_when_the_face_leaves_the_photo(golden):
    """Reflect-pad with blur: a face cut by the photo's edge gives a full crop without black borders."""
    photo, ref = golden
    left = int(ref["quad"][:, 0].min()) + 40
    cut = photo.crop((left, 0, photo.size[0], photo.size[1]))
    quad = ref["quad"] - (left, 0)
    crop = np.asarray(align_crop(cut, quad, 256))
    assert crop.shape == (256, 256, 3)
    edge = crop[:, :20].reshape(-1, 3)
    assert (edge.sum(axis=1) < 30).mean() < 0.05, "the padded band should hold mirrored content, not black"
    # The inside of the face is unaffected by padding on the far side.
    inside = _abs_diff(Image.fromarray(crop[:, 128:]), Image.fromarray(ref["aligned_256"][:, 128:]))
    assert inside.mean() < 2


def test_face_quad_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        face_quad(np.zeros((5, 2)))


@pytest.mark.parametrize("offset", [(400, 300), (1250, -150)], ids=["inside", "padded"])
def test_shrink_of_a_window_equals_shrinking_the_whole_photo(golden, offset):
    """align_crop resizes only the part of a big photo it keeps; the result must be the reference's (resize
    everything by the shrink factor, then align the shrunk photo), bit for bit."""
    photo, ref = golden
    big = noise_image(1601, 1203, seed=4)
    big.paste(photo.resize((1024, 1024), Image.Resampling.LANCZOS), offset)
    quad = ref["quad"] * 2 + offset + 0.5
    output_size = 48
    shrink = int(np.floor(np.hypot(*(quad[3] - quad[0])) / output_size * 0.5))
    assert shrink == 3
    whole = big.resize((int(np.rint(1601 / shrink)), int(np.rint(1203 / shrink))), Image.Resampling.LANCZOS)
    expected = align_crop(whole, quad / shrink, output_size)
    assert np.array_equal(np.asarray(align_crop(big, quad, output_size)), np.asarray(expected))
