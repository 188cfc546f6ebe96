"""The upload check (api/photo_check.py) against hostile files: each gets a stable code, real photos
pass, bombs are refused from the header, and thousands of mutated photos never escape as a crash."""

import io
import random

import pytest
from PIL import Image

from api.photo_check import inspect_photo
from common.errors import ApiError
from tests.services import upload_files

pytestmark = pytest.mark.trust

MAX_PIXELS, MIN_SIDE = 40_000_000, 64

EXPECTED = {
    "text_renamed_jpg": "unsupported_format",
    "truncated_jpeg": "invalid_image",
    "zip": "unsupported_format",
    "svg_with_script": "unsupported_format",
    "png_60000x60000": "image_too_large",
    "zero_bytes": "invalid_image",
    "gif": "unsupported_format",
    "corrupt_png": "invalid_image",
    "tiny_png": "image_too_small",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_upload_refused_with_code(name):
    data, _ = upload_files.hostile_uploads()[name]
    with pytest.raises(ApiError) as e:
        inspect_photo(data, MAX_PIXELS, MIN_SIDE)
    assert e.value.code == EXPECTED[name] and 400 <= e.value.status < 500


def test_bomb_refused_from_the_header_below_pillows_own_limit():
    # 8000×8000 = 64 MP: under Pillow's default limit (89 MP) but over ours.
    with pytest.raises(ApiError) as e:
        inspect_photo(upload_files.png_header_claiming(8000, 8000), MAX_PIXELS, MIN_SIDE)
    assert e.value.code == "image_too_large"


@pytest.mark.parametrize(("fmt", "name"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp")])
def test_real_photos_pass(fmt, name):
    info = inspect_photo(upload_files.photo(fmt, (96, 80)), MAX_PIXELS, MIN_SIDE)
    assert (info.format, info.width, info.height) == (name, 96, 80)


def test_heic_passes():
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    Image.new("RGB", (128, 96), (10, 200, 30)).save(buf, format="HEIF")
    info = inspect_photo(buf.getvalue(), MAX_PIXELS, MIN_SIDE)
    assert (info.format, info.width, info.height) == ("heif", 128, 96)


def test_exif_rotation_swaps_reported_dimensions():
    info = inspect_photo(upload_files.photo("JPEG", (96, 80), exif_orientation=6), MAX_PIXELS, MIN_SIDE)
    assert (info.width, info.height) == (80, 96)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    s = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not s:
            break
        p = rng.randrange(len(s))
        op = rng.random()
        if op < 0.6:
            s[p] = rng.randrange(256)
        elif op < 0.8:
            del s[p:p + rng.randint(1, 50)]
        else:
            s[p:p] = rng.randbytes(rng.randint(1, 20))
    if s and rng.random() < 0.3:
        s = s[: rng.randrange(1, len(s) + 1)]
    return bytes(s)


def test_mutated_photos_never_crash_the_check():
    import pillow_heif

    pillow_heif.register_heif_opener()
    heif = io.BytesIO()
    Image.new("RGB", (96, 80)).save(heif, format="HEIF")
    seeds = [upload_files.photo(f, (96, 80)) for f in ("JPEG", "PNG", "WEBP")] + [heif.getvalue()]
    rng = random.Random(20261125)
    crashes = {}
    for _ in range(1500):
        data = _mutate(rng, rng.choice(seeds))
        try:
            inspect_photo(data, MAX_PIXELS, MIN_SIDE)
        except ApiError:
            pass
        except Exception as e:  # noqa: BLE001 - the property under test: nothing but ApiError escapes
            crashes.setdefault(f"{type(e).__name__}: {e}"[:120], len(data))
    assert not crashes, crashes
