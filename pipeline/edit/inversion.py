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
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.edit.inverters import INVERSIONS
from pipeline.errors import INVALID_PARAMETER, PipelineError

FORMAT = 2
# SFE's fused 64² feature is stored in float16: 4 MB a face instead of 8. Measured on the golden SFE weights, the
# rounding (3.8e-4 of the feature's largest value) moves the 1024² inversion by 8.5e-5 and the edited image by
# 7.5e-5 of their largest value, against the 2e-3 image tolerance; bfloat16 would move them 5.7e-4 / 6.6e-4, and
# W+ in float16 5.2e-4 (W+ stays float32: 36 KB).
FEATURE_DTYPE = np.float16


@dataclass(frozen=True, eq=False)
class Inversion:
    """W+ codes of the face in a photo and how to put an edited face back.

    codes: ``[n_latent, 512]`` float32 (e4e output + latent_avg); quad: ``[4, 2]`` float64 corners of the
    aligned crop in oriented-photo pixels; photo_size: (width, height) after EXIF orientation; versions: model
    versions that produced it (``encoder``, ``generator``, ``sfe``); photo: the original encoded file, in memory
    only (never written by ``to_bytes``), or None.

    ``inverter`` says which inversion made it. ``"sfe"`` (StyleFeatureEditor) adds ``sfe_codes`` (SFE's W+,
    float32, what the face renders from) and ``feature`` (the fused feature ``[C, 64, 64]``, ``FEATURE_DTYPE``);
    ``codes`` are then e4e's W+ of the same crop, which measure how an edit moves the generator's feature."""

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
    inverter: str = "e4e"
    sfe_codes: np.ndarray | None = field(default=None, repr=False)
    feature: np.ndarray | None = field(default=None, repr=False)

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
        self._check_sfe()

    def _check_sfe(self) -> None:
        if self.inverter not in INVERSIONS:
            raise ValueError(f"inverter must be one of {', '.join(INVERSIONS)}, got {self.inverter!r}")
        if (self.inverter == "sfe") != (self.sfe_codes is not None and self.feature is not None):
            raise ValueError("an sfe inversion has sfe_codes and a feature, an e4e one neither")
        if self.inverter == "sfe":
            sfe_codes = np.array(self.sfe_codes, dtype=np.float32)
            feature = np.array(self.feature, dtype=FEATURE_DTYPE)
            if sfe_codes.shape != self.codes.shape or feature.ndim != 3:
                raise ValueError(f"sfe_codes must be shaped as codes {self.codes.shape} and feature [C, H, W], got "
                                 f"{sfe_codes.shape} and {feature.shape}")
            sfe_codes.setflags(write=False)
            feature.setflags(write=False)
            object.__setattr__(self, "sfe_codes", sfe_codes)
            object.__setattr__(self, "feature", feature)

    def with_photo(self, photo: bytes | None) -> Inversion:
        """The same inversion bound to ``photo`` (the encoded file it was computed from)."""
        return replace(self, photo=photo)

    def to_bytes(self) -> bytes:
        """Codes, quad, sizes, note, versions, face index, box and the inverter's own fields; never the photo."""
        buf = io.BytesIO()
        sfe = {"sfe_codes": self.sfe_codes, "feature": self.feature} if self.inverter == "sfe" else {}
        np.savez(buf, format=np.int64(FORMAT), codes=self.codes, quad=self.quad, qsize=np.float64(self.qsize),
                 n_faces=np.int64(self.n_faces), note=np.str_(self.note),
                 photo_size=np.array(self.photo_size, np.int64),
                 versions=np.str_(json.dumps(self.versions, sort_keys=True)), face_index=np.int64(self.face_index),
                 box=np.array(self.box if self.box is not None else (), np.int64), inverter=np.str_(self.inverter),
                 **sfe)
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
                           box=tuple(int(v) for v in f["box"]) if "box" in f.files and f["box"].size else None,
                           # blobs written before SFE are e4e's
                           inverter=str(f["inverter"]) if "inverter" in f.files else "e4e",
                           sfe_codes=f["sfe_codes"] if "sfe_codes" in f.files else None,
                           feature=f["feature"] if "feature" in f.files else None)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise PipelineError(INVALID_PARAMETER, f"not a stored inversion: {type(exc).__name__}: {exc}") from exc


class PendingInversion:
    """An e4e inversion whose last W+ rows are still to compute (``Editor.invert(staged=True)``).

    A render's preview reads only its first layers, which read the first W+ rows (14 of 18 for the 256²
    preview of a 1024² render); the heads of the last rows are ~18 % of e4e on a CPU. The rows ready now are
    ``ready``; ``finish()`` computes the others once and gives the ``Inversion``, the only form that is
    stored. The fields that do not depend on the codes (``face_index``, ``quad``, ``photo_size``...) are the
    inversion's already."""

    def __init__(self, ready: np.ndarray, rest: Callable[[], np.ndarray], n_latent: int, **fields):
        self.ready = np.array(ready, dtype=np.float32)
        if self.ready.ndim != 2 or not 0 < self.ready.shape[0] < n_latent:
            raise ValueError(f"ready must be the first rows [k, dim] of {n_latent}, got {self.ready.shape}")
        self.n_latent = n_latent
        self._rest: Callable[[], np.ndarray] | None = rest
        self._fields = fields
        self._inversion: Inversion | None = None

    def __getattr__(self, name: str):
        """The inversion's other fields (``face_index``, ``quad``, ``photo``, ``photo_size``...)."""
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(name)

    @property
    def inverter(self) -> str:
        return "e4e"

    @property
    def finished(self) -> bool:
        return self._inversion is not None

    def preview_codes(self) -> np.ndarray:
        """``[n_latent, dim]``: the ready rows, then the last of them repeated in place of the rows to come
        (what only layers after the preview read)."""
        missing = self.n_latent - self.ready.shape[0]
        return np.concatenate([self.ready, np.repeat(self.ready[-1:], missing, axis=0)])

    def finish(self) -> Inversion:
        """The whole inversion (computed on the first call, then remembered)."""
        if self._inversion is None:
            rest = np.asarray(self._rest(), dtype=np.float32)
            self._inversion = Inversion(codes=np.concatenate([self.ready, rest]), **self._fields)
            self._rest = None  # the encoder's features it held go with it
        return self._inversion
