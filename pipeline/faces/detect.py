"""The faces in a photo, as a person would point at them: boxes in upright photo pixels, largest first.

MediaPipe's face detector finds them (whole photo, turned ±30°, tile grids for small ones) and its face mesh,
on an upright crop of each, fits the 68 landmarks that alignment (``pipeline.faces.align``) needs; the rest of
the world sees a box, a confidence and an index (``FaceBox``).
The index is the face's position in the list, so ``Editor.invert(photo, face=i)`` and a stored detection
name the same face: the order is the largest face (its alignment quad) first, deterministic for a photo.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.errors import INVALID_PARAMETER, PipelineError
from pipeline.faces.align import face_quad

__all__ = ["DetectedFace", "FaceBox", "MAX_FACES", "detect_faces", "detected_faces", "face_boxes", "find_faces", "find_landmarks"]

# MediaPipe's 468-point mesh → the iBUG 68-point layout the FFHQ procedure indexes (chin 0-16, brows 17-26,
# nose 27-35, eyes 36-47, mouth 48-67). Fixed by the face-mesh topology; the golden meta carries the same list.
MEDIAPIPE_TO_68 = (
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
)
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
# Landmarks further than this from the photo's origin (pixels) are not a detection of any photo we accept.
MAX_COORDINATE = 1e6


@dataclass(frozen=True)
class FaceBox:
    """One face: ``box`` = (left, top, right, bottom) in the upright (EXIF-oriented) photo's pixels.

    ``landmarks``: the 68 points alignment reads (``[68, 2]``, photo pixels), kept so that a detection stored
    at upload aligns the face later without searching the photo again (``Editor.invert(faces=...)``); not
    part of what is served (``to_dict``)."""

    index: int
    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        """The JSON shape the service stores and serves: ``{index, box: [l, t, r, b], score}``."""
        return {"index": self.index, "box": list(self.box), "score": round(self.score, 4)}


def detect_faces(image: Image.Image, max_faces: int = MAX_FACES) -> list[FaceBox]:
    """Every face in ``image`` (an upright photo, as ``pipeline.faces.photo.load_photo`` returns), largest first."""
    return face_boxes(find_faces(image, max_faces), image.size)


def face_boxes(faces: list[DetectedFace], size: tuple[int, int]) -> list[FaceBox]:
    """``find_faces``'s answer as ``FaceBox`` es, boxes rounded outwards and clipped to the photo."""
    width, height = size
    out = []
    for index, face in enumerate(faces):
        x0, y0, x1, y1 = (float(v) for v in face.box)
        box = (max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1)))
        out.append(FaceBox(index=index, box=box, score=float(face.score), landmarks=face.landmarks))
    return out


def detected_faces(boxes: Sequence[FaceBox]) -> list[DetectedFace]:
    """``face_boxes``'s answer (landmarks included) back as ``find_faces``'s, for alignment. A box without
    68 finite landmarks inside its photo's reach is an ``invalid_parameter`` error: the caller detects anew."""
    faces = []
    for face in boxes:
        points = None if face.landmarks is None else np.asarray(face.landmarks, dtype=np.float64)
        if points is None or points.shape != (len(MEDIAPIPE_TO_68), 2) or not np.isfinite(points).all() \
                or np.abs(points).max() > MAX_COORDINATE:
            raise PipelineError(INVALID_PARAMETER, f"face {face.index} has no usable 68-point landmarks")
        faces.append(DetectedFace(points, np.asarray(face.box, dtype=np.float64), float(face.score)))
    return faces


# --- finding faces: the detector, then the mesh on each ---------------------------------------------------

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


def find_landmarks(img: Image.Image, max_faces: int = MAX_FACES) -> list[np.ndarray]:
    """68-point landmarks ``[68, 2]`` (pixel coordinates of ``img``) of every face found, largest first."""
    return [face.landmarks for face in find_faces(img, max_faces)]


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
