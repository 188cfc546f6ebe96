"""Face alignment: MediaPipe face mesh → 68 landmarks → the FFHQ quad → the aligned crop StyleGAN expects.

The quad and crop follow the FFHQ dataset script's ``recreate_aligned_images`` (also e4e's and StyleCLIP's
``align_face``) step by step, float details included, because the encoder and generator were trained on
exactly that framing: eyes and mouth define an oriented square; the photo is shrunk, cropped, reflect-padded
with a blur where the square leaves the photo, warped with ``Image.QUAD`` and resized with LANCZOS.

Quads are in the pixel coordinates of the image given (pixel ``i`` has its centre at ``i``, as in the
reference); corners are ``c-x-y, c-x+y, c+x+y, c+x-y`` = top-left, bottom-left, bottom-right, top-right of
the aligned image.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.ndimage
from PIL import Image

from pipeline.errors import FACE_TOO_SMALL, INVALID_PARAMETER, NO_FACE, PipelineError

# MediaPipe's 468-point mesh → the iBUG 68-point layout the FFHQ procedure indexes (chin 0-16, brows 17-26,
# nose 27-35, eyes 36-47, mouth 48-67). Fixed by the face-mesh topology; the golden meta carries the same list.
MEDIAPIPE_TO_68 = (
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
)
# Below this quad side (≈ 4x the eye distance) the 256 px crop is mostly upsampling blur.
MIN_FACE_SIZE = 64.0
MAX_FACES = 6
# Detection sees a copy at most this large (the face detector looks at 192 px of the frame anyway, and a
# 12 MP frame costs MediaPipe more than the reduction). Landmarks are mapped back to full resolution.
DETECT_MAX_SIDE = 1024
# Tiles for small faces: grids of overlapping tiles, each this fraction of the frame's width and height (2x2 at
# 0.6, 3x3 at 0.35: a face ~3 % of the frame's width fills ~10 % of a small tile, which the detector finds).
TILE_FRACTIONS = ((0.6, 2), (0.35, 3))
MIN_TILE_SIDE = 64
# The mesh runs on a square this many times the detector's box, at most MESH_MAX_SIDE pixels (its landmark
# model reads a 192 px crop of the face).
MESH_CROP_SCALE = 2.0
MESH_MAX_SIDE = 512
# The whole-frame mesh fit is kept only for faces this close to upright (degrees); others are refitted on an
# upright crop (measured: frame-fit crops drift by 2-25 % of the quad beyond ~25 degrees of roll).
MAX_FRAME_ROLL = 20.0
# The detector also sees the photo turned both ways by this many degrees (it misses faces rolled past ~25).
VIEW_ROLL = 30.0
# A face rolled less than this is fitted without rotating its crop (the mesh handles small roll itself).
MIN_REFIT_ROLL = 10.0
MIN_DETECTION_CONFIDENCE = 0.5
# FFHQ framing constants (reference values).
_EYE_TO_MOUTH_SHIFT = 0.1


@dataclass(frozen=True)
class Alignment:
    """The aligned crop of the main face and where it came from in the (upright) photo."""

    crop: Image.Image          # output_size x output_size RGB
    quad: np.ndarray           # [4, 2] float64, photo pixel coordinates
    qsize: float               # side of the quad in photo pixels
    landmarks: np.ndarray      # [68, 2] float64, photo pixel coordinates
    n_faces: int               # faces found in the photo (the largest is aligned)
    note: str = ""             # human remark, e.g. "3 faces found; edited the largest"


# --- geometry ----------------------------------------------------------------------------------------------

def face_quad(landmarks68: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ oriented square for 68 landmarks: ``(quad [4, 2], qsize)`` in the landmarks' coordinates."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected landmarks of shape (68, 2), got {lm.shape}")
    eye_left = np.mean(lm[36:42], axis=0)
    eye_right = np.mean(lm[42:48], axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5          # outer mouth corners
    eye_to_mouth = mouth_avg - eye_avg

    # x: the face's horizontal axis, a blend of the eye line and the eye→mouth line turned by 90 degrees.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * _EYE_TO_MOUTH_SHIFT
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = float(np.hypot(*x) * 2)
    return quad, qsize


def align_crop(img: Image.Image, quad: np.ndarray, output_size: int = 256,
               transform_size: int | None = None) -> Image.Image:
    """Warp the quad of ``img`` to an ``output_size`` square, the FFHQ way.

    ``transform_size`` is the size of the intermediate QUAD warp (FFHQ: 4096 for 1024 outputs; e4e: 256 for
    256); it defaults to ``output_size``.
    """
    transform_size = transform_size or output_size
    img = img if img.mode == "RGB" else img.convert("RGB")
    quad = np.array(quad, dtype=np.float64)
    qsize = float(np.hypot(*(quad[3] - quad[0])))

    # Shrink: a big face is first LANCZOS-reduced by an integer factor, so the bilinear warp never skips pixels.
    shrink = int(np.floor(qsize / output_size * 0.5))
    size = img.size
    if shrink > 1:
        size = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        quad /= shrink
        qsize /= shrink

    # Crop to the quad's bounding box plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = _bounds(quad)
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, size[0]), min(crop[3] + border, size[1]))
    if shrink > 1:
        # Resize only the window the crop keeps: the same filter taps as resizing the whole photo and then
        # cropping (Pillow reads past the box up to the photo's edges), at a fraction of the cost on 12 MP.
        sx, sy = img.size[0] / size[0], img.size[1] / size[1]
        img = img.resize((crop[2] - crop[0], crop[3] - crop[1]), Image.Resampling.LANCZOS,
                         box=(crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy))
        quad -= crop[0:2]
    elif crop[2] - crop[0] < size[0] or crop[3] - crop[1] < size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # Pad where the quad leaves the photo: mirror the photo, blur the mirrored band, fade it to the median.
    bounds = _bounds(quad)
    pad = (max(-bounds[0] + border, 0), max(-bounds[1] + border, 0),
           max(bounds[2] - img.size[0] + border, 0), max(bounds[3] - img.size[1] + border, 0))
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = _reflect_pad_blur(img, pad, qsize)
        quad += pad[:2]

    # +0.5: the quad uses pixel-centre-at-integer coordinates, Pillow's transform pixel-centre-at-half.
    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, (quad + 0.5).flatten(),
                        Image.Resampling.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return img


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
    return (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
            int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))


def _reflect_pad_blur(img: Image.Image, pad: np.ndarray, qsize: float) -> Image.Image:
    """The reference's padding, in float32 as it does it: ``pad`` = (left, top, right, bottom) pixels."""
    a = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
    h, w, _ = a.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    # 0 inside the photo, rising to 1 at the outer edge of the padding.
    mask = np.maximum(1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
                      1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]))
    blur = qsize * 0.02
    a += (scipy.ndimage.gaussian_filter(a, [blur, blur, 0]) - a) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    a += (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)), "RGB")


# --- detection ---------------------------------------------------------------------------------------------
# Two MediaPipe stages: the full-range face detector finds faces (small ones, several, turned ones) and their
# eye keypoints; the face mesh then fits landmarks on an upright square crop around each face. The mesh on its
# own finds only faces that fill much of the frame, and fits turned faces badly.


@dataclass(frozen=True)
class DetectedFace:
    """One face found in a photo: its 68 landmarks, its box and the detector's confidence."""

    landmarks: np.ndarray   # [68, 2] float64, photo pixel coordinates
    box: np.ndarray         # [x0, y0, x1, y1] float64, photo pixels (the detector's box, else the landmarks')
    score: float            # the detector's confidence; MIN_DETECTION_CONFIDENCE when only the mesh found it


def find_faces(img: Image.Image, max_faces: int = MAX_FACES) -> list[DetectedFace]:
    """Every face found in ``img`` (upright RGB), largest quad first; deterministic for a given image.

    Faces turned in the picture plane (a phone held at an angle, a photo whose EXIF orientation was lost) are
    fitted on a view rotated upright and mapped back to ``img``'s coordinates.
    """
    img = img if img.mode == "RGB" else img.convert("RGB")
    models = _models()
    factor = -(-max(img.size) // DETECT_MAX_SIDE)    # ceil
    # Box-average by an integer factor: 6x faster than a resize on 12 MP, and each small pixel covers exactly
    # factor x factor photo pixels, so normalized coordinates scale by small.size * factor.
    small = img.reduce(factor) if factor > 1 else img
    size = np.array(small.size, dtype=np.float64) * factor
    # The reference's own path first: the mesh over the whole frame. Where it works (upright faces that fill
    # a good part of the frame) our landmarks are then the reference's, not a near miss.
    frame_faces = [n * size for n in models.mesh(small, MAX_FACES)]
    candidates = _find_candidates(small, size, models)
    # Past ~20 degrees of roll the whole-frame fit drifts (crops off by 3-25 %), and on faces turned by a
    # quarter or more it returns a wrong fit that can even look upright; the detector's eye keypoints tell.
    faces = []
    for lm in frame_faces:
        centre = face_quad(lm)[0].mean(0)
        around = [c for c in candidates if _inside(centre, c.box)]
        if abs(_roll(lm)) <= MAX_FRAME_ROLL and all(abs(c.angle) <= MAX_FRAME_ROLL for c in around):
            faces.append(_detected(lm, around[0] if around else None))
    for candidate in candidates[: 2 * max_faces]:
        if any(_inside(face_quad(f.landmarks)[0].mean(0), candidate.box) for f in faces):
            continue
        lm = _fit_mesh(img, candidate, models)
        if lm is not None and not any(_same_face(lm, f.landmarks) for f in faces):
            faces.append(_detected(lm, candidate))
    return sorted(faces, key=lambda f: -face_quad(f.landmarks)[1])[:max_faces]


def detect_faces(img: Image.Image, max_faces: int = MAX_FACES) -> list[np.ndarray]:
    """68-point landmarks ``[68, 2]`` (pixel coordinates of ``img``) of every face found, largest first."""
    return [face.landmarks for face in find_faces(img, max_faces)]


def align_face(img: Image.Image, output_size: int = 256, transform_size: int | None = None, face: int = 0,
               faces: list[DetectedFace] | None = None) -> Alignment:
    """Detect faces in ``img`` (upright RGB) and align face number ``face`` (0 = the largest).

    ``faces``: ``find_faces(img)``'s answer when the caller already has it. Raises ``no_face`` when none is
    found, ``invalid_parameter`` when ``face`` is not one of them, and ``face_too_small`` when the face spans
    fewer than ``MIN_FACE_SIZE`` pixels.
    """
    faces = find_faces(img) if faces is None else faces
    if not faces:
        raise PipelineError(NO_FACE, "no face was found in the photo; use a photo with one clearly visible face")
    if not 0 <= face < len(faces):
        raise PipelineError(INVALID_PARAMETER, f"face {face} is out of range: the photo has {len(faces)} "
                                               f"face{'s' if len(faces) > 1 else ''} (valid: 0-{len(faces) - 1})")
    landmarks = faces[face].landmarks
    quad, qsize = face_quad(landmarks)
    if qsize < MIN_FACE_SIZE:
        raise PipelineError(FACE_TOO_SMALL, f"the face is too small to edit well ({qsize:.0f} px across, at least "
                                            f"{MIN_FACE_SIZE:.0f} px needed); use a closer or larger photo")
    note = ""
    if len(faces) > 1:
        note = f"{len(faces)} faces found; edited the largest" if face == 0 else f"{len(faces)} faces found"
    crop = align_crop(img, quad, output_size, transform_size)
    return Alignment(crop=crop, quad=quad, qsize=qsize, landmarks=landmarks, n_faces=len(faces), note=note)


def _detected(landmarks: np.ndarray, candidate: _Candidate | None) -> DetectedFace:
    if candidate is None:
        box = np.concatenate([landmarks.min(0), landmarks.max(0)])
        return DetectedFace(landmarks, box, MIN_DETECTION_CONFIDENCE)
    return DetectedFace(landmarks, candidate.box.copy(), candidate.score)


@dataclass(frozen=True)
class _Candidate:
    box: np.ndarray      # [x0, y0, x1, y1] in photo pixels
    angle: float         # in-plane angle of the eye line in degrees (0 = upright, 90 = a quarter clockwise)
    score: float


# A view of the photo for the detector, and the map from its normalized coordinates to photo pixels.
_View = tuple[Image.Image, Callable[[np.ndarray], np.ndarray]]


def _find_candidates(small: Image.Image, size: np.ndarray, models: _MediaPipe) -> list[_Candidate]:
    """Detector boxes in photo pixels (``size`` = photo width, height), best first, from every view of
    ``small`` (the downscaled photo); upside down only when no other view finds a face."""
    found = [c for view, to_photo in _views(small, size) for c in _detect_in_view(view, to_photo, models)]
    if not found:
        view, to_photo = _rotated_view(small, size, 180.0)
        found = _detect_in_view(view, to_photo, models)
    return _non_max_suppression(found)


def _views(small: Image.Image, size: np.ndarray) -> list[_View]:
    """The whole photo, turned both ways by VIEW_ROLL degrees (the detector misses faces past ~20 degrees of
    roll: a phone held at an angle), and four overlapping tiles (faces too small for the detector's 192 px view
    of the whole frame)."""
    w, h = small.size
    views: list[_View] = [(small, lambda p: p * size)]
    views += [_rotated_view(small, size, angle) for angle in (VIEW_ROLL, -VIEW_ROLL)]
    for fraction, n in TILE_FRACTIONS:
        tw, th = round(w * fraction), round(h * fraction)
        if min(tw, th) < MIN_TILE_SIDE:   # a photo this small has no face too small for the whole view
            continue
        for ox in np.linspace(0, w - tw, n).round().astype(int):
            for oy in np.linspace(0, h - th, n).round().astype(int):
                views.append((small.crop((ox, oy, ox + tw, oy + th)),
                              lambda p, ox=ox, oy=oy, tw=tw, th=th: (p * (tw, th) + (ox, oy)) / (w, h) * size))
    return views


def _rotated_view(small: Image.Image, size: np.ndarray, angle: float) -> _View:
    """``small`` turned counter-clockwise by ``angle`` degrees (whole, on grey), and the map back."""
    view = small.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=(128, 128, 128))
    centre_view = np.array(view.size, dtype=np.float64) / 2
    centre_small = np.array(small.size, dtype=np.float64) / 2
    scale = size / np.array(small.size, dtype=np.float64)

    def to_photo(p: np.ndarray) -> np.ndarray:
        return (_turn_clockwise(p * view.size - centre_view, angle) + centre_small) * scale

    return view, to_photo


def _turn_clockwise(points: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate ``[N, 2]`` vectors clockwise on screen (image y points down) by ``degrees``."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return points @ np.array([[c, s], [-s, c]])


def _detect_in_view(view: Image.Image, to_photo: Callable[[np.ndarray], np.ndarray],
                    models: _MediaPipe) -> list[_Candidate]:
    out = []
    for box, eyes, score in models.detect(view):
        x0, y0, x1, y1 = box
        top_left, top_right, bottom_left, bottom_right = to_photo(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
        right_eye, left_eye = to_photo(eyes)
        # Upright, the subject's right eye is left of the left eye (eye vector along +x, angle 0); image y
        # points down, so a face turned clockwise on screen has a positive angle.
        dx, dy = left_eye - right_eye
        angle = float(np.degrees(np.arctan2(dy, dx)))
        # A box from a turned view maps to a turned rectangle: keep its centre and its sides, axis-aligned.
        centre = (top_left + bottom_right) / 2
        half = np.array([np.hypot(*(top_right - top_left)), np.hypot(*(bottom_left - top_left))]) / 2
        out.append(_Candidate(np.concatenate([centre - half, centre + half]), angle, score))
    return out


def _non_max_suppression(candidates: list[_Candidate], max_iou: float = 0.3) -> list[_Candidate]:
    kept: list[_Candidate] = []
    for c in sorted(candidates, key=lambda c: -c.score):
        if all(_iou(c.box, k.box) <= max_iou for k in kept):
            kept.append(c)
    return kept


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return float(inter / union) if union > 0 else 0.0


def _fit_mesh(img: Image.Image, candidate: _Candidate, models: _MediaPipe) -> np.ndarray | None:
    """Landmarks [68, 2] in photo pixels from a square crop around ``candidate`` turned upright; None if the
    mesh finds no face there (a detector false positive)."""
    x0, y0, x1, y1 = candidate.box
    side = int(np.ceil(MESH_CROP_SCALE * max(x1 - x0, y1 - y0)))
    left, top = int(np.floor((x0 + x1 - side) / 2)), int(np.floor((y0 + y1 - side) / 2))
    crop = img.crop((left, top, left + side, top + side))   # outside the photo reads as black
    if side > MESH_MAX_SIDE:
        crop = crop.resize((MESH_MAX_SIDE, MESH_MAX_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    # Quarter turns are exact transposes; what is left (at most 45 degrees) is a rotation about the centre.
    turns = int(np.rint(candidate.angle / 90.0)) % 4
    rest = candidate.angle - 90.0 * np.rint(candidate.angle / 90.0)
    view = crop.transpose(_QUARTER_TURNS[turns]) if turns else crop
    if abs(rest) > MIN_REFIT_ROLL:
        view = view.rotate(rest, resample=Image.Resampling.BILINEAR)
    found = models.mesh(view, 1)
    if not found:
        return None
    normalized = found[0]
    if abs(rest) > MIN_REFIT_ROLL:
        normalized = _turn_clockwise(normalized - 0.5, rest) + 0.5
    return _unturn(normalized, turns) * side + (left, top)


def _inside(point: np.ndarray, box: np.ndarray) -> bool:
    return bool(np.all(point >= box[:2]) and np.all(point <= box[2:]))


def _roll(landmarks: np.ndarray) -> float:
    """In-plane angle of the eye line in degrees (0 = upright)."""
    dx, dy = landmarks[42:48].mean(0) - landmarks[36:42].mean(0)
    return float(np.degrees(np.arctan2(dy, dx)))


def _same_face(a: np.ndarray, b: np.ndarray) -> bool:
    (qa, sa), (qb, sb) = face_quad(a), face_quad(b)
    return bool(np.hypot(*(qa.mean(0) - qb.mean(0))) < 0.25 * max(sa, sb))


_QUARTER_TURNS = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


def _unturn(normalized: np.ndarray, turns: int) -> np.ndarray:
    """Normalized [0, 1] coordinates in a view turned ``turns`` quarters counter-clockwise → unturned image."""
    u, v = normalized[:, 0], normalized[:, 1]
    if turns == 1:
        return np.stack([1 - v, u], axis=1)
    if turns == 2:
        return np.stack([1 - u, 1 - v], axis=1)
    if turns == 3:
        return np.stack([v, 1 - u], axis=1)
    return normalized


class _MediaPipe:
    """The two MediaPipe graphs. Their ``process`` is not thread-safe, so calls are serialized."""

    def __init__(self, max_faces: int) -> None:
        import mediapipe as mp  # heavy (TensorFlow Lite runtime): imported on first detection only

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=MIN_DETECTION_CONFIDENCE)  # 1 = full range (~5 m)
        self._meshes = {n: mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=n, refine_landmarks=False,
            min_detection_confidence=MIN_DETECTION_CONFIDENCE) for n in {1, max_faces}}
        self._lock = threading.Lock()

    def detect(self, img: Image.Image) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """``(box [x0, y0, x1, y1], eyes [[right], [left]], score)`` per face, normalized to ``img``."""
        with self._lock:
            result = self._detector.process(_pixels(img))
        out = []
        for det in result.detections or []:
            loc = det.location_data
            b = loc.relative_bounding_box
            box = np.array([b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height], dtype=np.float64)
            kp = loc.relative_keypoints   # 0: right eye, 1: left eye (the subject's)
            eyes = np.array([(kp[0].x, kp[0].y), (kp[1].x, kp[1].y)], dtype=np.float64)
            out.append((box, eyes, float(det.score[0])))
        return out

    def mesh(self, img: Image.Image, max_faces: int) -> list[np.ndarray]:
        """Normalized [0, 1] coordinates ``[68, 2]`` of up to ``max_faces`` faces in ``img``."""
        with self._lock:
            result = self._meshes[max_faces].process(_pixels(img))
        return [np.array([(f.landmark[i].x, f.landmark[i].y) for i in MEDIAPIPE_TO_68], dtype=np.float64)
                for f in result.multi_face_landmarks or []]


def _pixels(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


_instances: dict[int, _MediaPipe] = {}
_instances_lock = threading.Lock()


def _models() -> _MediaPipe:
    """Built on first use, once per process (keyed by pid: graphs must not be shared across a worker fork)."""
    with _instances_lock:
        pid = os.getpid()
        if pid not in _instances:
            _instances[pid] = _MediaPipe(MAX_FACES)
        return _instances[pid]
