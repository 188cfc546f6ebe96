"""Test photos: the golden face photo, and generated ones (no face, EXIF-tagged, malformed)."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
EXIF_ORIENTATION = 0x0112
EXIF_GPS_IFD = 0x8825


def golden_dir() -> Path:
    """``$GOLDEN_DIR``, else ``../shared/golden`` beside the repository."""
    return Path(os.environ.get("GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))


def golden_face() -> tuple[Image.Image, dict[str, np.ndarray]]:
    """The golden face photo (RGB) and its ``face_align.npz`` arrays; skips when the fixtures are absent."""
    directory = golden_dir()
    if not (directory / "face_align.npz").is_file():
        pytest.skip(f"golden fixtures not found in {directory} (set GOLDEN_DIR)")
    meta = json.loads((directory / "meta.json").read_text())["face_align"]
    with np.load(directory / "face_align.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["settings"] = meta["settings"]
    from pipeline.faces.photo import load_photo

    # Upright, as the service and the golden check see it (a fixture photo may carry an EXIF orientation).
    return load_photo(directory / meta["input_file"]), arrays


def noise_image(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def gradient_image(width: int = 640, height: int = 480) -> Image.Image:
    y, x = np.mgrid[:height, :width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 128)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def marked_image(width: int = 60, height: int = 40) -> Image.Image:
    """Grey, with a red block in the top-left corner: shows where a rotation moved the top-left."""
    a = np.full((height, width, 3), 128, dtype=np.uint8)
    a[: height // 4, : width // 4] = (255, 0, 0)
    return Image.fromarray(a)


def jpeg_bytes(img: Image.Image, orientation: int | None = None, gps: bool = False, quality: int = 95) -> bytes:
    """``img`` as JPEG, optionally with an EXIF orientation tag and a GPS position."""
    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    if gps:
        exif[0x010F] = "TestCam"  # Make
        gps_ifd = exif.get_ifd(EXIF_GPS_IFD)
        gps_ifd[1] = "N"                                 # GPSLatitudeRef
        gps_ifd[2] = (48.0, 51.0, 29.0)                  # GPSLatitude
        gps_ifd[3] = "E"                                 # GPSLongitudeRef
        gps_ifd[4] = (2.0, 17.0, 40.0)                   # GPSLongitude
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but whose pixel data is a few bytes: decoding it would
    fail (truncated), so an error that names the size proves it was refused from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)   # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


# --- photos with several faces, composed from the golden face and the public-domain astronaut -------------------

def two_faces(height: int = 400, astronaut_scale: float = 1.0, gap: int = 0) -> Image.Image:
    """The golden face photo and ``pipeline/samples/astronaut.jpg`` side by side, ``height`` pixels high (the
    astronaut ``astronaut_scale`` times as high, at the bottom), ``gap`` grey pixels between them."""
    first = golden_face()[0]
    second = Image.open(REPO_ROOT / "pipeline" / "samples" / "astronaut.jpg").convert("RGB")
    first = first.resize((round(first.width * height / first.height), height), Image.Resampling.LANCZOS)
    small = round(height * astronaut_scale)
    second = second.resize((round(second.width * small / second.height), small), Image.Resampling.LANCZOS)
    photo = Image.new("RGB", (first.width + gap + second.width, height), (128, 128, 128))
    photo.paste(first, (0, 0))
    photo.paste(second, (first.width + gap, height - small))
    return photo


def turned(photo: Image.Image, degrees: float) -> Image.Image:
    """``photo`` turned counter-clockwise by ``degrees`` (a phone held at an angle), whole, on grey."""
    return photo.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(128, 128, 128))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
