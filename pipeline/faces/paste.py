"""Paste an edited aligned face back into the photo it came from.

The aligned image is the photo's face quad warped to a square (``pipeline.faces.align``), so the inverse is one
affine map: each photo pixel inside the quad's bounding box reads the face image at the matching point. A
rounded mask with a smooth falloff blends the two, so no seam shows, and every photo pixel outside the mask
keeps its exact value. The per-pixel work is C code limited to the quad's bounding box, so a 12 MP photo
costs about what its face does: OpenCV's ``warpAffine`` (3x faster than Pillow's transform here, and it
rounds where Pillow's 8-bit bilinear truncates, darkening by half a level) and Pillow's masked paste.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2  # opencv-contrib-python, a dependency of mediapipe
import numpy as np
from PIL import Image

# Width of the mask's falloff, as a fraction of the quad side.
DEFAULT_FEATHER = 0.1
# The mask reaches zero this far inside the quad (fraction of the half side), so the blend never reads the
# face image's outermost pixels, which the warp interpolates against its border.
_EDGE_MARGIN = 0.02
# Faces are LANCZOS-reduced to this many pixels per photo pixel before the bicubic warp. Measured on the
# golden photo (re-pasting its own aligned crop, mean abs error in the face): 1x 2.6 (blur of two resamplings),
# 2x 1.2, no reduction 0.6 but with the aliasing of a 4-6x unfiltered decimation on real faces.
_OVERSAMPLE = 2.0
# Exponent of the superellipse |u|^p + |v|^p = 1: 2 is an ellipse, large p a square. 4 keeps the hair and
# chin (near the edges' midpoints) while dropping the corners, which are background.
_MASK_SHAPE = 4.0
# Overlapping faces weigh m / (1 - m + this): large enough to divide safely, small enough that inside one face's
# core (m = 1) any other face's weight (at most 254/255 of a mask) moves no pixel by half a level.
CORE_EPSILON = 1e-6


def paste_back(photo: Image.Image, face: Image.Image, quad: np.ndarray,
               feather: float = DEFAULT_FEATHER) -> Image.Image:
    """``photo`` (RGB) with the square aligned ``face`` (any size) blended in through ``quad`` [4, 2].

    ``quad`` is the alignment quad in ``photo``'s pixel coordinates (``Alignment.quad``). The result has the
    photo's size; pixels outside the feathered mask are identical to the photo's.
    """
    return paste_back_many(photo, [face], quad, feather)[0]


def paste_back_many(photo: Image.Image, faces: Sequence[Image.Image], quad: np.ndarray,
                    feather: float = DEFAULT_FEATHER) -> list[Image.Image]:
    """``paste_back`` for several faces through one quad (one edit at several strengths): the warp and the
    mask are computed once."""
    photo = photo if photo.mode == "RGB" else photo.convert("RGB")
    quad = np.asarray(quad, dtype=np.float64)
    if quad.shape != (4, 2) or not np.all(np.isfinite(quad)):
        raise ValueError(f"quad must be a finite [4, 2] array, got shape {quad.shape}")
    sizes = {f.size for f in faces}
    if any(w != h for w, h in sizes):
        raise ValueError(f"aligned faces must be square, got sizes {sorted(sizes)}")
    if len(sizes) > 1:
        raise ValueError(f"faces pasted together must share one size, got {sorted(sizes)}")

    placement = place(quad, photo.size, faces[0].size[0], feather) if faces else None
    if placement is None:  # no faces, or the quad lies entirely outside the photo
        return [photo.copy() for _ in faces]
    box, mask = placement.box, Image.fromarray(placement.mask, "L")
    out = []
    for face in faces:
        result = photo.copy()
        result.paste(Image.fromarray(placement.warp_face(face), "RGB"), box[:2], mask)
        out.append(result)
    return out


def paste_faces(photo: Image.Image, faces: Sequence[Image.Image], quads: Sequence[np.ndarray],
                feather: float = DEFAULT_FEATHER) -> Image.Image:
    """Several edited faces (one per quad: a group photo) blended into one copy of ``photo``.

    Where masks overlap, each face weighs ``m / (1 - m)`` (``m``: its mask), normalized: the blend is smooth
    (no seam where one mask starts) and inside a face's core (``m = 1``) that face alone shows, so one face's
    mask never erases another's edit. The photo shows through by the product of ``1 - m``; outside every mask
    it is untouched. One face is exactly ``paste_back``."""
    photo = photo if photo.mode == "RGB" else photo.convert("RGB")
    if len(faces) != len(quads):
        raise ValueError(f"{len(faces)} faces and {len(quads)} quads")
    if len(faces) == 1:
        return paste_back(photo, faces[0], quads[0], feather)
    layers = []
    for face, quad in zip(faces, quads, strict=True):
        quad = np.asarray(quad, dtype=np.float64)
        if quad.shape != (4, 2) or not np.all(np.isfinite(quad)):
            raise ValueError(f"quad must be a finite [4, 2] array, got shape {quad.shape}")
        if face.size[0] != face.size[1]:
            raise ValueError(f"aligned faces must be square, got {face.size}")
        placement = place(quad, photo.size, face.size[0], feather)
        if placement is not None:
            layers.append((placement, placement.warp_face(face)))
    if not layers:
        return photo.copy()
    left, top = min(p.box[0] for p, _ in layers), min(p.box[1] for p, _ in layers)
    right, bottom = max(p.box[2] for p, _ in layers), max(p.box[3] for p, _ in layers)
    base = np.asarray(photo.crop((left, top, right, bottom)), dtype=np.float64)
    weighted = np.zeros_like(base)
    weights = np.zeros(base.shape[:2])
    uncovered = np.ones(base.shape[:2])
    for placement, warped in layers:
        x0, y0, x1, y1 = placement.box
        window = np.s_[y0 - top:y1 - top, x0 - left:x1 - left]
        m = placement.mask.astype(np.float64) / 255
        w = m / (1 - m + CORE_EPSILON)
        weighted[window] += w[..., None] * warped
        weights[window] += w
        uncovered[window] *= 1 - m
    blend = weighted / np.maximum(weights, CORE_EPSILON)[..., None]
    mixed = base * uncovered[..., None] + blend * (1 - uncovered[..., None])
    result = photo.copy()
    result.paste(Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), "RGB"), (left, top))
    return result


class _Placement:
    """Where one aligned face of ``face_side`` pixels lands in a photo: its box, the map from box pixels to
    (reduced) face pixels, and the blend mask over the box (uint8)."""

    def __init__(self, box: tuple[int, int, int, int], side: int, face_side: int, warp: np.ndarray,
                 mask: np.ndarray):
        self.box, self.side, self.face_side, self.warp, self.mask = box, side, face_side, warp, mask

    @property
    def region(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]

    def warp_face(self, face: Image.Image) -> np.ndarray:
        """The face warped onto the box, ``[h, w, 3]`` uint8."""
        face = face if face.mode == "RGB" else face.convert("RGB")
        if face.size[0] != self.face_side:
            raise ValueError(f"faces pasted together must share one size, got {face.size} and {self.face_side}")
        if self.side != self.face_side:
            face = face.resize((self.side, self.side), Image.Resampling.LANCZOS)
        # Replicate the face's edge rather than read black past it (the mask is ~0 there anyway).
        return _warp(np.asarray(face), self.warp, self.region, cv2.BORDER_REPLICATE, cv2.INTER_CUBIC)


def place(quad: np.ndarray, photo_size: tuple[int, int], face_side: int, feather: float) -> _Placement | None:
    """Where a ``face_side``² aligned face goes through ``quad`` in a photo of ``photo_size``: its box, warp and
    mask (shared with the GPU paste, ``pipeline.faces.paste_gpu``); None when the quad lies outside the photo."""
    box = _bounding_box(quad, photo_size)
    if box is None:
        return None
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    # Reduce big faces first: the warp does not filter when shrinking, and hair would alias.
    side = min(face_side, max(8, int(np.ceil(qsize * _OVERSAMPLE))))
    warp = _affine_from_photo(quad, side, box)
    region = (box[2] - box[0], box[3] - box[1])
    mask = _warp(np.asarray(_mask(side, feather)), warp, region, cv2.BORDER_CONSTANT)
    return _Placement(box, side, face_side, warp, mask)


def face_mask(size: int, feather: float = DEFAULT_FEATHER) -> Image.Image:
    """The blend mask over an aligned face of ``size`` pixels ("L", 255 = face): a rounded square that fades
    to 0 over ``feather`` of the side (smoothstep, so neither the mask nor its slope jumps)."""
    return _mask(size, feather).copy()


@lru_cache(maxsize=8)
def _mask(size: int, feather: float) -> Image.Image:
    if not 0 < feather <= 0.5:
        raise ValueError(f"feather must be in (0, 0.5], got {feather}")
    t = (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1        # pixel centres in [-1, 1]
    r = (np.abs(t)[None, :] ** _MASK_SHAPE + np.abs(t)[:, None] ** _MASK_SHAPE) ** (1 / _MASK_SHAPE)
    outer = 1 - _EDGE_MARGIN
    s = np.clip((outer - r) / (2 * feather), 0, 1)
    alpha = s * s * (3 - 2 * s)
    return Image.fromarray(np.rint(alpha * 255).astype(np.uint8), "L")


def _bounding_box(quad: np.ndarray, photo_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Integer (left, top, right, bottom) of the photo pixels the quad touches, clipped; None if empty."""
    edges = quad + 0.5     # quad corners are pixel-centre coordinates; the box is in pixel edges
    left, top = np.floor(edges.min(axis=0)).astype(int)
    right, bottom = np.ceil(edges.max(axis=0)).astype(int)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, photo_size[0]), min(bottom, photo_size[1])
    if right <= left or bottom <= top:
        return None
    return int(left), int(top), int(right), int(bottom)


def _affine_from_photo(quad: np.ndarray, side: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """[2, 3] map from box pixel indices to face pixel indices (pixel ``i`` centred at ``i``, OpenCV's way).

    Alignment put the face's point ``f`` (continuous, pixel edges at integers) at the photo's pixel-centre
    coordinate ``q0 + (ex * fx + ey * fy) / side``, with ``ex = q3 - q0`` (the face's x axis) and
    ``ey = q1 - q0`` (its y axis); ``align_crop``'s ``quad + 0.5`` is Pillow's edge-based convention.
    """
    axes = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)   # columns ex, ey
    to_face = np.linalg.inv(axes) * side
    # box pixel b is photo point box[:2] + b; face pixel index = continuous face coordinate - 0.5
    offset = to_face @ (np.array(box[:2], dtype=np.float64) - quad[0]) - 0.5
    return np.concatenate([to_face, offset[:, None]], axis=1)


def _warp(src: np.ndarray, warp: np.ndarray, region: tuple[int, int], border: int,
          interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    return cv2.warpAffine(np.ascontiguousarray(src), warp, region, flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=border, borderValue=0)
