"""The faces in a photo, as a person would point at them: boxes in upright photo pixels, largest first.

``pipeline.faces.align`` finds them (small ones, several, turned in the picture plane) and fits the landmarks that
alignment needs; this module is what the rest of the world sees of that: a box, a confidence and an index.
The index is the face's position in the list, so ``Editor.invert(photo, face=i)`` and a stored detection
name the same face: the order is the largest face (its alignment quad) first, deterministic for a photo.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from pipeline.faces.align import MAX_FACES, DetectedFace, find_faces

__all__ = ["FaceBox", "MAX_FACES", "detect_faces", "face_boxes"]


@dataclass(frozen=True)
class FaceBox:
    """One face: ``box`` = (left, top, right, bottom) in the upright (EXIF-oriented) photo's pixels."""

    index: int
    box: tuple[int, int, int, int]
    score: float

    def to_dict(self) -> dict:
        """The JSON shape the service stores and serves: ``{index, box: [l, t, r, b], score}``."""
        return {"index": self.index, "box": list(self.box), "score": round(self.score, 4)}


def detect_faces(image: Image.Image, max_faces: int = MAX_FACES) -> list[FaceBox]:
    """Every face in ``image`` (an upright photo, as ``pipeline.faces.photo.load_photo`` returns), largest first."""
    return face_boxes(find_faces(image, max_faces), image.size)


def face_boxes(faces: list[DetectedFace], size: tuple[int, int]) -> list[FaceBox]:
    """``find_faces``'s answer as ``FaceBox`` es, boxes rounded outwards and clipped to the photo."""
    import math

    width, height = size
    out = []
    for index, face in enumerate(faces):
        x0, y0, x1, y1 = (float(v) for v in face.box)
        box = (max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1)))
        out.append(FaceBox(index=index, box=box, score=float(face.score)))
    return out
