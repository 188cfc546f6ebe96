"""Face alignment: 68 landmarks (``pipeline.faces.detect``) → the FFHQ quad → the aligned crop StyleGAN expects.

The quad and crop follow the FFHQ dataset script's ``recreate_aligned_images`` (also e4e's and StyleCLIP's
``align_face``) step by step, float details included, because the encoder and generator were trained on
exactly that framing: eyes and mouth define an oriented square; the photo is shrunk, cropped, reflect-padded
with a blur where the square leaves the photo, warped with ``Image.QUAD`` and resized with LANCZOS.

Quads are in the pixel coordinates of the image given (pixel ``i`` has its centre at ``i``, as in the
reference); corners are ``c-x-y, c-x+y, c+x+y, c+x-y`` = top-left, bottom-left, bottom-right, top-right of
the aligned image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.ndimage
from PIL import Image

from pipeline.errors import FACE_TOO_SMALL, INVALID_PARAMETER, NO_FACE, PipelineError

if TYPE_CHECKING:
    from pipeline.faces.detect import DetectedFace

# Below this quad side (≈ 4x the eye distance) the 256 px crop is mostly upsampling blur.
MIN_FACE_SIZE = 64.0
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


def align_face(img: Image.Image, faces: list[DetectedFace], output_size: int = 256,
               transform_size: int | None = None, face: int = 0) -> Alignment:
    """Align face number ``face`` (0 = the largest) of ``faces`` (``pipeline.faces.detect.find_faces(img)``)
    in ``img`` (upright RGB). Raises ``no_face`` when none is
    found, ``invalid_parameter`` when ``face`` is not one of them, and ``face_too_small`` when the face spans
    fewer than ``MIN_FACE_SIZE`` pixels.
    """
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
