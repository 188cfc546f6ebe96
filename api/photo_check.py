"""Validate an uploaded photo with Pillow only (the API image has no torch).

Order matters for safety: restrict decoders to an allow-list, read the header and check the pixel
count *before* decoding, then decode fully so truncated files are caught here, not in a worker.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from functools import cache

from PIL import Image, UnidentifiedImageError

from common.errors import ApiError
from common.image_formats import FORMATS

# Pillow format name → the name the API reports.
ALLOWED_FORMATS = {f.pillow: f.name for f in FORMATS.values()}
# Phones write JPEGs with a Multi-Picture (MPF) segment (a depth map, a preview): Pillow's JPEG opener
# returns those as "MPO". They are JPEG files and the first frame is the photo.
_REPORTED_FORMATS = ALLOWED_FORMATS | {"MPO": "jpeg"}
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112
# What Pillow's decoders raise on hostile bytes (found by tests/api/test_photo_check.py's mutations).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError)


@dataclass(frozen=True)
class PhotoInfo:
    format: str  # a key of common.image_formats.FORMATS
    width: int  # after EXIF orientation
    height: int


@cache
def enable_heif() -> None:
    """Teach Pillow to read HEIC/HEIF (iPhone photos); once per process."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def inspect_photo(data: bytes, max_pixels: int, min_side: int) -> PhotoInfo:
    """Format, oriented size, or an ApiError (`unsupported_format`, `image_too_large`, ...)."""
    enable_heif()
    if not data:
        raise ApiError("invalid_image", "the file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
        except UnidentifiedImageError:
            raise ApiError("unsupported_format", "send a JPEG, PNG, WebP or HEIC/HEIF photo") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ApiError("image_too_large", f"the photo has more than {max_pixels} pixels") from None
        except _DECODE_ERRORS as error:  # a known header followed by garbage fails inside open()
            raise ApiError("invalid_image", f"the photo could not be decoded ({error})") from None
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ApiError(
                    "image_too_large", f"{width}x{height} has more than {max_pixels} pixels; send a smaller photo"
                )
            try:
                image.load()
                orientation = image.getexif().get(_EXIF_ORIENTATION)
            except _DECODE_ERRORS as error:
                raise ApiError("invalid_image", f"the photo could not be decoded ({error})") from None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ApiError("image_too_large", f"the photo has more than {max_pixels} pixels") from None
            kind = _REPORTED_FORMATS[image.format]
    if orientation in _ROTATED_ORIENTATIONS:
        width, height = height, width
    if min(width, height) < min_side:
        raise ApiError("image_too_small", f"{width}x{height} is smaller than {min_side} pixels on a side")
    return PhotoInfo(format=kind, width=width, height=height)
