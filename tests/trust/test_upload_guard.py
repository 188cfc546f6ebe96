"""Upload guard: every hostile file gets a stable code, real photos pass, bombs never reach decoding."""

import pytest
from PIL import Image

from common.upload_guard import UploadLimits, UploadRejected, inspect_photo, sniff
from tests.trust import hostile

LIMITS = UploadLimits(max_bytes=5 * 1024 * 1024, max_pixels=40_000_000, min_side=64)

EXPECTED = {
    "text_renamed_jpg": "unsupported_format",
    "truncated_jpeg": "invalid_image",
    "zip": "unsupported_format",
    "svg_with_script": "unsupported_format",
    "png_60000x60000": "image_too_large",
    "zero_bytes": "empty_file",
    "gif": "unsupported_format",
    "corrupt_png": "invalid_image",
    "tiny_png": "image_too_small",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_upload_refused_with_code(name):
    data, _ = hostile.hostile_uploads()[name]
    with pytest.raises(UploadRejected) as e:
        inspect_photo(data, LIMITS)
    assert e.value.code == EXPECTED[name]
    assert 400 <= e.value.status < 500


def test_oversized_body_refused_before_parsing():
    with pytest.raises(UploadRejected) as e:
        inspect_photo(b"\xff\xd8\xff" + b"\0" * (LIMITS.max_bytes + 1), LIMITS)
    assert (e.value.code, e.value.status) == ("file_too_large", 413)


def test_bomb_is_refused_from_the_header_even_below_pillows_own_limit():
    # 8000×8000 = 64 MP: under Pillow's hard limit (179 MP) but over ours; must not be decoded.
    data = hostile.png_header_claiming(8000, 8000)
    with pytest.raises(UploadRejected) as e:
        inspect_photo(data, LIMITS)
    assert e.value.code == "image_too_large"


@pytest.mark.parametrize(("fmt", "name"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp")])
def test_real_photos_pass(fmt, name):
    info = inspect_photo(hostile.photo(fmt, (96, 80)), LIMITS)
    assert (info.format, info.width, info.height) == (name, 96, 80)


def test_heic_passes():
    import pillow_heif

    pillow_heif.register_heif_opener()
    import io

    buf = io.BytesIO()
    Image.new("RGB", (128, 96), (10, 200, 30)).save(buf, format="HEIF")
    data = buf.getvalue()
    assert sniff(data[:16]) == "HEIF"
    info = inspect_photo(data, LIMITS)
    assert (info.format, info.width, info.height) == ("heic", 128, 96)


def test_exif_rotation_swaps_reported_dimensions():
    info = inspect_photo(hostile.photo("JPEG", (96, 80), exif_orientation=6), LIMITS)
    assert (info.width, info.height) == (80, 96)
