"""``Inversion``: everything an edit needs from one photo, storable as bytes (the worker's inversion cache).

Stored with ``np.savez`` and read with ``allow_pickle=False``: a cache blob can never execute code. Text fields
are numpy unicode arrays, so ``Inversion.from_bytes(inv.to_bytes())`` reproduces every stored field bit for bit.

The photo itself is never stored: it is kept once, where it was uploaded, and deleting it there must leave no
copy behind. An inversion fresh from ``Editor.invert`` carries it in memory (``photo``) for the edit that
follows; one read back from bytes has none, and the edit is given the photo again (``Editor.edit(photo=...)`` or
``inv.with_photo(...)``). Format 1 blobs (which embedded the photo) are refused like any unreadable blob, so a
cache treats them as a miss and overwrites them.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.errors import INVALID_PARAMETER, PipelineError

FORMAT = 2


@dataclass(frozen=True, eq=False)
class Inversion:
    """W+ codes of the face in a photo and how to put an edited face back.

    codes: ``[n_latent, 512]`` float32 (e4e output + latent_avg); quad: ``[4, 2]`` float64 corners of the
    aligned crop in oriented-photo pixels; photo_size: (width, height) after EXIF orientation; versions: model
    versions that produced it (``encoder``, ``generator``); photo: the original encoded file, in memory only
    (never written by ``to_bytes``), or None."""

    codes: np.ndarray
    quad: np.ndarray
    qsize: float
    n_faces: int
    note: str
    photo_size: tuple[int, int]
    versions: dict[str, str] = field(default_factory=dict)
    face_index: int = 0
    box: tuple[int, int, int, int] | None = None
    photo: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        codes = np.array(self.codes, dtype=np.float32)
        quad = np.array(self.quad, dtype=np.float64)
        if codes.ndim != 2 or quad.shape != (4, 2):
            raise ValueError(f"codes must be [n_latent, dim] and quad [4, 2], got {codes.shape} and {quad.shape}")
        codes.setflags(write=False)
        quad.setflags(write=False)
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "quad", quad)
        object.__setattr__(self, "photo_size", (int(self.photo_size[0]), int(self.photo_size[1])))
        object.__setattr__(self, "face_index", int(self.face_index))
        if self.box is not None:
            object.__setattr__(self, "box", tuple(int(v) for v in self.box))
        if self.photo is not None:
            object.__setattr__(self, "photo", bytes(self.photo))

    def with_photo(self, photo: bytes | None) -> Inversion:
        """The same inversion bound to ``photo`` (the encoded file it was computed from)."""
        return replace(self, photo=photo)

    def to_bytes(self) -> bytes:
        """Codes, quad, sizes, note, versions, face index and box; never the photo."""
        buf = io.BytesIO()
        np.savez(buf, format=np.int64(FORMAT), codes=self.codes, quad=self.quad, qsize=np.float64(self.qsize),
                 n_faces=np.int64(self.n_faces), note=np.str_(self.note),
                 photo_size=np.array(self.photo_size, np.int64),
                 versions=np.str_(json.dumps(self.versions, sort_keys=True)), face_index=np.int64(self.face_index),
                 box=np.array(self.box if self.box is not None else (), np.int64))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Inversion:
        """The stored fields (``photo`` is None). Raises ``invalid_parameter`` for anything else, including
        format 1 blobs, which held a copy of the photo."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as f:
                if int(f["format"]) != FORMAT:
                    raise PipelineError(INVALID_PARAMETER, f"inversion format {int(f['format'])} is not {FORMAT}")
                return cls(codes=f["codes"], quad=f["quad"], qsize=float(f["qsize"]), n_faces=int(f["n_faces"]),
                           note=str(f["note"]), photo_size=tuple(int(v) for v in f["photo_size"]),
                           versions=json.loads(str(f["versions"])),
                           # blobs written before group photos hold the largest face and no box
                           face_index=int(f["face_index"]) if "face_index" in f.files else 0,
                           box=tuple(int(v) for v in f["box"]) if "box" in f.files and f["box"].size else None)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise PipelineError(INVALID_PARAMETER, f"not a stored inversion: {type(exc).__name__}: {exc}") from exc
