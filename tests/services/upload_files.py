"""Upload files built in memory, hostile and valid: bombs, truncations, renamed text, SVG with script, real
photos of any format and size (for the upload check's tests and the attack tests)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from PIL import Image


def photo(fmt: str = "JPEG", size: tuple[int, int] = (96, 80), exif_orientation: int | None = None) -> bytes:
    img = Image.new("RGB", size, (180, 120, 90))
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims width×height, followed by a tiny IDAT: a decompression bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def zip_file() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.jpg", photo())
    return buf.getvalue()


SVG_WITH_SCRIPT = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
                   b'<script>alert(document.cookie)</script><rect width="100" height="100"/></svg>')
TEXT_AS_JPG = b"this is not a photo, just text renamed to photo.jpg\n"


def truncated_jpeg() -> bytes:
    data = photo("JPEG", (256, 256))
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    data = bytearray(photo("PNG", (128, 128)))
    data[60:80] = b"\x00" * 20  # inside IDAT: CRC and zlib stream both break
    return bytes(data)


def hostile_uploads() -> dict[str, tuple[bytes, str]]:
    """name → (bytes, file name the client claims)."""
    return {
        "text_renamed_jpg": (TEXT_AS_JPG, "photo.jpg"),
        "truncated_jpeg": (truncated_jpeg(), "photo.jpg"),
        "zip": (zip_file(), "photo.jpg"),
        "svg_with_script": (SVG_WITH_SCRIPT, "photo.svg"),
        "png_60000x60000": (png_header_claiming(60000, 60000), "bomb.png"),
        "zero_bytes": (b"", "empty.jpg"),
        "gif": (photo("GIF"), "anim.gif"),
        "corrupt_png": (corrupt_png(), "photo.png"),
        "tiny_png": (photo("PNG", (8, 8)), "tiny.png"),
    }
