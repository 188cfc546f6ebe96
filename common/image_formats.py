"""The image formats the service reads and writes: one table of name, media type, file extension and Pillow's
name, so an upload check, a stored object's content type and a download's media type never disagree."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    name: str  # what the API reports and accepts (`format` of an image, `output_format` of an edit)
    media_type: str
    extension: str  # of a stored result
    pillow: str  # Pillow's format name
    output: bool  # an edit may write it (`output_format`)


FORMATS: dict[str, ImageFormat] = {
    f.name: f
    for f in (
        ImageFormat("jpeg", "image/jpeg", "jpg", "JPEG", output=True),
        ImageFormat("png", "image/png", "png", "PNG", output=True),
        ImageFormat("webp", "image/webp", "webp", "WEBP", output=True),
        ImageFormat("heif", "image/heif", "heif", "HEIF", output=False),  # iPhone photos: read, never written
    )
}
OUTPUT_FORMATS: tuple[str, ...] = tuple(name for name, f in FORMATS.items() if f.output)
_BY_EXTENSION = {f.extension: f for f in FORMATS.values()} | {"jpeg": FORMATS["jpeg"]}


def media_type_of_key(key: str) -> str | None:
    """The media type of a stored object, from its extension (None for a key without a known one)."""
    found = _BY_EXTENSION.get(key.rsplit(".", 1)[-1])
    return found.media_type if found else None
