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
from dataclasses import dataclass

import numpy as np
import scipy.ndimage
from PIL import Image

from pipeline.errors import FACE_TOO_SMALL, NO_FACE, PipelineError

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
# Detection runs on a copy at most this large: the mesh model sees a 192 px face crop anyway, and feeding a
# 12 MP frame to MediaPipe costs far more than the downscale. Landmarks are mapped back to full resolution.
DETECT_MAX_SIDE = 2048
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
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    # Crop to the quad's bounding box plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = _bounds(quad)
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
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

def detect_faces(img: Image.Image, max_faces: int = MAX_FACES) -> list[np.ndarray]:
    """68-point landmarks ``[68, 2]`` (pixel coordinates of ``img``) of every face found, largest first.

    A photo with no upright face is tried turned by 90, 270 and 180 degrees (a sideways photo whose EXIF
    orientation was lost), and the landmarks are mapped back to ``img``'s own coordinates.
    """
    img = img if img.mode == "RGB" else img.convert("RGB")
    small = _downscaled(img, DETECT_MAX_SIDE)
    detector = _detector(max_faces)
    for turn in (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_180):
        view = small if turn is None else small.transpose(turn)
        normalized = detector.landmarks(view)
        if normalized:
            faces = [_unturn(n, turn) * img.size for n in normalized]
            return sorted(faces, key=lambda lm: -face_quad(lm)[1])
    return []


def align_face(img: Image.Image, output_size: int = 256, transform_size: int | None = None) -> Alignment:
    """Detect faces in ``img`` (upright RGB) and align the largest one.

    Raises ``PipelineError("no_face")`` when none is found and ``PipelineError("face_too_small")`` when the
    largest one spans fewer than ``MIN_FACE_SIZE`` pixels.
    """
    faces = detect_faces(img)
    if not faces:
        raise PipelineError(NO_FACE, "no face was found in the photo; use a photo with one clearly visible face")
    landmarks = faces[0]
    quad, qsize = face_quad(landmarks)
    if qsize < MIN_FACE_SIZE:
        raise PipelineError(FACE_TOO_SMALL, f"the face is too small to edit well ({qsize:.0f} px across, at least "
                                            f"{MIN_FACE_SIZE:.0f} px needed); use a closer or larger photo")
    note = f"{len(faces)} faces found; edited the largest" if len(faces) > 1 else ""
    crop = align_crop(img, quad, output_size, transform_size)
    return Alignment(crop=crop, quad=quad, qsize=qsize, landmarks=landmarks, n_faces=len(faces), note=note)


def _downscaled(img: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(img.size)
    if scale >= 1:
        return img
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    # reducing_gap: a fast integer pre-reduction, then an accurate resample; detection needs no more.
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _unturn(normalized: np.ndarray, turn: Image.Transpose | None) -> np.ndarray:
    """Normalized [0, 1] coordinates in a turned view → normalized coordinates in the unturned image."""
    u, v = normalized[:, 0], normalized[:, 1]
    if turn is None:
        return normalized
    if turn == Image.Transpose.ROTATE_90:      # counter-clockwise: view (u, v) came from (1 - v, u)
        return np.stack([1 - v, u], axis=1)
    if turn == Image.Transpose.ROTATE_270:     # clockwise: view (u, v) came from (v, 1 - u)
        return np.stack([v, 1 - u], axis=1)
    return np.stack([1 - u, 1 - v], axis=1)    # 180 degrees


class _FaceMesh:
    """One MediaPipe FaceMesh graph; ``process`` is not thread-safe, so calls are serialized."""

    def __init__(self, max_faces: int):
        import mediapipe as mp  # heavy (TensorFlow Lite runtime); imported on first detection only

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=max_faces, refine_landmarks=False,
            min_detection_confidence=MIN_DETECTION_CONFIDENCE)
        self._lock = threading.Lock()

    def landmarks(self, img: Image.Image) -> list[np.ndarray]:
        """Normalized [0, 1] coordinates ``[68, 2]`` of each face in ``img`` (RGB)."""
        pixels = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
        with self._lock:
            result = self._mesh.process(pixels)
        faces = result.multi_face_landmarks or []
        out = []
        for face in faces:
            points = face.landmark
            out.append(np.array([(points[i].x, points[i].y) for i in MEDIAPIPE_TO_68], dtype=np.float64))
        return out


_detectors: dict[tuple[int, int], _FaceMesh] = {}
_detectors_lock = threading.Lock()


def _detector(max_faces: int) -> _FaceMesh:
    """A per-process detector (keyed by pid: a graph built before a worker fork must not be shared)."""
    key = (os.getpid(), max_faces)
    with _detectors_lock:
        if key not in _detectors:
            _detectors[key] = _FaceMesh(max_faces)
        return _detectors[key]
