"""A folder of face photos as a training set: discovery, alignment, a stable split and a resumable order.

* Discovery: every ``.jpg/.jpeg/.png/.webp`` below the folder, by relative path (CelebA-HQ's
  ``CelebA-HQ-img/0.jpg …`` and FFHQ's ``00000/00000.png …`` layouts work as they are).
* Alignment: ``align="auto"`` takes square images of a power-of-two side (FFHQ, CelebA-HQ: 1024²) as already
  FFHQ-aligned and runs the project's own ``align_face`` on the rest, once, caching the crops; photos without a
  usable face are skipped and counted.
* Split: a file is in validation when a hash of its relative path falls below ``val_split``: the same file
  stays on the same side when files are added or removed, on every machine.
* Order: sample ``k`` of the stream is ``perm(seed + epoch)[k mod n]``: the whole order follows from the seed
  and a counter, so a checkpoint stores one integer to resume exactly, and DDP ranks read disjoint slices.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.errors import INVALID_PARAMETER, PipelineError

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
ALIGN_MODES = ("auto", "yes", "no")


@dataclass(frozen=True)
class FaceFile:
    rel: str           # path relative to the data folder (the identity used by the split)
    path: Path         # the file actually read: the original, or its cached aligned crop


def discover(root: Path) -> list[str]:
    """Relative paths of the images below ``root``, sorted (the order everything else derives from)."""
    if not root.is_dir():
        raise PipelineError(INVALID_PARAMETER, f"--data {root}: not a directory")
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in EXTENSIONS and p.is_file() and not p.name.startswith("."))
    if not rels:
        raise PipelineError(INVALID_PARAMETER, f"--data {root}: no {'/'.join(EXTENSIONS)} images found")
    return rels


def in_validation(rel: str, val_split: float) -> bool:
    digest = hashlib.sha256(rel.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < val_split


def split(rels: list[str], val_split: float) -> tuple[list[str], list[str]]:
    """(train, validation); validation gets at least one file when ``val_split`` > 0 and there are two."""
    if not 0 <= val_split < 1:
        raise PipelineError(INVALID_PARAMETER, f"--val-split must be in [0, 1), got {val_split}")
    val = [r for r in rels if in_validation(r, val_split)]
    if val_split > 0 and not val and len(rels) > 1:  # tiny sets: the file with the smallest hash
        val = [min(rels, key=lambda r: hashlib.sha256(r.encode()).digest())]
    train = [r for r in rels if r not in set(val)]
    return train, val


def looks_aligned(path: Path) -> bool:
    with Image.open(path) as img:
        w, h = img.size
    return w == h and w >= 256 and w & (w - 1) == 0


def needs_alignment(root: Path, rels: list[str], align: str) -> list[str]:
    """The files ``align`` sends through ``align_face`` (``auto``: those that do not look FFHQ-aligned)."""
    if align not in ALIGN_MODES:
        raise PipelineError(INVALID_PARAMETER, f"--align must be one of {ALIGN_MODES}, got {align!r}")
    return [r for r in rels if align == "yes" or (align == "auto" and not looks_aligned(root / r))]


def align_share(root: Path, todo: list[str], cache: Path, rank: int = 0, world: int = 1,
                progress: bool = True) -> None:
    """Align this rank's ``rank::world`` share of ``todo`` into ``cache`` (skipping what is cached already);
    the caller synchronizes the ranks before ``collect`` reads the cache."""
    from tqdm import tqdm

    for rel in tqdm(todo[rank::world], desc="align", disable=not progress or rank != 0):
        _align_one(root / rel, _cached(cache, rel))


def collect(root: Path, rels: list[str], todo: list[str], cache: Path) -> tuple[list[FaceFile], list[str]]:
    """(usable files, ``"rel: reason"`` of the skipped ones) once the alignment is done."""
    files, skipped, todo_set = [], [], set(todo)
    for rel in rels:
        cached = _cached(cache, rel)
        if rel not in todo_set:
            files.append(FaceFile(rel, root / rel))
        elif cached.is_file():
            files.append(FaceFile(rel, cached))
        elif cached.with_suffix(".noface").is_file():
            skipped.append(f"{rel}: {cached.with_suffix('.noface').read_text().strip()}")
        else:
            skipped.append(f"{rel}: not aligned")
    return files, skipped


def _cached(cache: Path, rel: str) -> Path:
    return cache / (hashlib.sha256(rel.encode()).hexdigest()[:24] + ".png")


def _align_one(src: Path, dst: Path) -> None:
    from pipeline.errors import PipelineError as Error
    from pipeline.faces.align import align_face
    from pipeline.faces.detect import find_faces
    from pipeline.faces.photo import load_photo

    if dst.is_file() or dst.with_suffix(".noface").is_file():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        photo = load_photo(src)
        crop = align_face(photo, find_faces(photo), output_size=1024).crop
    except Error as exc:  # no_face, face_too_small, invalid_image: skip the file, say why
        dst.with_suffix(".noface").write_text(f"{exc.code}: {exc.message}\n")
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    crop.save(tmp, format="PNG")
    os.replace(tmp, dst)


class FaceImages(torch.utils.data.Dataset):
    """Aligned faces as ``[3, size, size]`` tensors in [-1, 1] (e4e's train transform: resize, normalize)."""

    def __init__(self, files: list[FaceFile], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.files[index].path) as img:
            img = img.convert("RGB")
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.Resampling.LANCZOS)
            a = np.asarray(img, dtype=np.float32)
        return torch.from_numpy(a).permute(2, 0, 1) / 127.5 - 1


class StreamSampler(torch.utils.data.Sampler):
    """Index batches for the next ``steps`` optimizer steps: per step, ``accum`` micro-batches of ``batch``
    for this rank. Global sample ``k`` is ``perm(seed + k // n)[k % n]``; the steps consume the stream from
    ``start`` on, ``E = batch·accum·world`` samples each, micro-batch ``m`` of rank ``r`` taking the slice at
    ``(m·world + r)·batch``. Only ``start`` needs saving to resume, even with another batch or world size."""

    def __init__(self, n: int, seed: int, batch: int, accum: int, world: int, rank: int, start: int, steps: int):
        if n < 1:
            raise PipelineError(INVALID_PARAMETER, "no training images (all in validation or skipped)")
        self.n, self.seed, self.batch, self.accum = n, seed, batch, accum
        self.world, self.rank, self.start, self.steps = world, rank, start, steps
        self._perms: dict[int, torch.Tensor] = {}

    def _sample(self, k: int) -> int:
        epoch = k // self.n
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))}
        return int(self._perms[epoch][k % self.n])

    def __len__(self) -> int:
        return max(0, self.steps) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        per_step = self.batch * self.accum * self.world
        for step in range(self.steps):
            for m in range(self.accum):
                first = self.start + step * per_step + (m * self.world + self.rank) * self.batch
                yield [self._sample(k) for k in range(first, first + self.batch)]
