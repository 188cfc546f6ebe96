"""Check an uploaded photo before it is stored: size, format by magic bytes, dimensions from the header
(decompression bombs are refused before a single pixel is decoded), then one full decode so truncated
or corrupt files are refused at upload time instead of failing a job later.

The file name and the declared Content-Type are never trusted; only the bytes are.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image

# magic → Pillow format name. HEIF brands cover iPhone photos (heic/heix/mif1...); AVIF is not accepted.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "HEIF": "heic"}
# Everything Pillow raises on hostile data (DecompressionBombError is not an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError,
                  TypeError, Image.DecompressionBombError)
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class UploadRejected(ValueError):
    """The upload is refused; `code` is a stable API error code, `status` the HTTP status to answer."""

    def __init__(self, code: str, message: str, status: int = 422):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 64


@dataclass(frozen=True)
class PhotoInfo:
    format: str  # jpeg | png | webp | heic
    width: int  # after EXIF orientation
    height: int
    bytes: int


def sniff(head: bytes) -> str | None:
    """The Pillow format name the first bytes announce, or None if it is none we accept."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return None


def _register_heif() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()


def inspect_photo(data: bytes, limits: UploadLimits) -> PhotoInfo:
    """Validate `data` as a photo within `limits`; raise UploadRejected with a stable code otherwise."""
    if not data:
        raise UploadRejected("empty_file", "the file is empty")
    if len(data) > limits.max_bytes:
        raise UploadRejected("file_too_large", f"the file is larger than {limits.max_bytes} bytes", status=413)
    fmt = sniff(data[:16])
    if fmt is None:
        raise UploadRejected(
            "unsupported_format", "the file is not a JPEG, PNG, WebP or HEIC/HEIF image (checked by content)"
        )
    if fmt == "HEIF":
        _register_heif()
    try:
        with warnings.catch_warnings():
            # Our own pixel cap, checked next, replaces Pillow's warning; its hard error is caught below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as img:
                width, height = img.size
                _check_dimensions(width, height, limits)
                orientation = img.getexif().get(0x0112, 1) if fmt in ("JPEG", "WEBP", "HEIF") else 1
                if fmt == "JPEG":
                    # Decoding at 1/8 scale still walks the whole entropy-coded stream (truncation and
                    # corruption show up) for a fraction of the memory and time of a full decode.
                    img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                img.load()
    except UploadRejected:
        raise
    except Image.DecompressionBombError:
        raise UploadRejected("image_too_large", f"the image has more than {limits.max_pixels} pixels") from None
    except _DECODE_ERRORS as e:
        raise UploadRejected("invalid_image", f"the image could not be decoded ({type(e).__name__})") from None
    if orientation in _ROTATED:
        width, height = height, width
    return PhotoInfo(format=FORMATS[fmt], width=width, height=height, bytes=len(data))


def _check_dimensions(width: int, height: int, limits: UploadLimits) -> None:
    if width * height > limits.max_pixels:
        raise UploadRejected(
            "image_too_large", f"{width}×{height} is more than {limits.max_pixels} pixels"
        )
    if min(width, height) < limits.min_side:
        raise UploadRejected("image_too_small", f"{width}×{height}: each side must be ≥ {limits.min_side} px")
