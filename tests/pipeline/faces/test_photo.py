"""Photo decoding (orientation, modes, formats, refusals) and metadata-free encoding."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.faces.photo import encode_image, load_photo
from tests.pipeline.images import (
    EXIF_GPS_IFD,
    gradient_image,
    jpeg_bytes,
    marked_image,
    noise_image,
    png_with_declared_size,
)


def _red_corner(img: Image.Image) -> str:
    """Which corner holds the red marker."""
    a = np.asarray(img).astype(int)
    h, w = a.shape[:2]
    corners = {"top-left": a[2, 2], "top-right": a[2, w - 3], "bottom-left": a[h - 3, 2],
               "bottom-right": a[h - 3, w - 3]}
    return max(corners, key=lambda k: corners[k][0] - corners[k][1])


@pytest.mark.parametrize(("orientation", "corner"), [(1, "top-left"), (6, "top-right"), (8, "bottom-left"),
                                                     (3, "bottom-right")])
def test_exif_orientation_is_applied(orientation, corner):
    photo = load_photo(jpeg_bytes(marked_image(60, 40), orientation=orientation))
    assert photo.mode == "RGB"
    assert photo.size == ((60, 40) if orientation in (1, 3) else (40, 60))
    assert _red_corner(photo) == corner


def test_sources_bytes_path_and_image_agree(tmp_path):
    data = jpeg_bytes(marked_image(), orientation=6)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    from_bytes = np.asarray(load_photo(data))
    assert np.array_equal(from_bytes, np.asarray(load_photo(path)))
    assert np.array_equal(from_bytes, np.asarray(load_photo(str(path))))
    assert np.array_equal(from_bytes, np.asarray(load_photo(Image.open(io.BytesIO(data)))))


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_encode_strips_gps_exif_and_icc(fmt):
    data = jpeg_bytes(noise_image(64, 48), gps=True)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(EXIF_GPS_IFD)  # the input really carries GPS
    photo = load_photo(data)
    photo.info["icc_profile"] = b"fake profile"  # would be copied by Pillow's PNG encoder from .info
    photo.info["exif"] = data                   # likewise for WebP/PNG
    out = encode_image(photo, fmt)
    decoded = Image.open(io.BytesIO(out))
    assert decoded.format == fmt.upper()
    assert decoded.size == (64, 48)
    assert len(decoded.getexif()) == 0
    for key in ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp"):
        assert key not in decoded.info
    assert b"Exif" not in out and b"TestCam" not in out


def test_encode_png_is_lossless_and_rejects_unknown_format():
    img = gradient_image(50, 30)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_image(img, "png")))), np.asarray(img))
    with pytest.raises(PipelineError) as err:
        encode_image(img, "gif")
    assert err.value.code == "invalid_parameter"


def test_alpha_is_flattened_on_white():
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[:, :5] = (0, 0, 255, 255)   # opaque blue
    rgba[:, 5:] = (255, 0, 0, 0)     # fully transparent red
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    a = np.asarray(load_photo(buf.getvalue()))
    assert tuple(a[0, 0]) == (0, 0, 255)
    assert tuple(a[0, 9]) == (255, 255, 255)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    a = np.asarray(load_photo(buf.getvalue()))
    assert a.shape == (1, 3, 3)
    assert list(a[0, :, 0]) == [0, 128, 255]


def test_palette_with_transparency_and_cmyk_become_rgb():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putpixel((0, 0), 1)
    buf = io.BytesIO()
    p.save(buf, format="PNG", transparency=0)
    a = np.asarray(load_photo(buf.getvalue()))
    assert tuple(a[0, 0]) == (200, 100, 50) and tuple(a[5, 5]) == (255, 255, 255)

    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, format="JPEG", quality=95)   # pure red ink
    r, g, b = np.asarray(load_photo(buf.getvalue())).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_heic_round_trip():
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("encoders"):
        pytest.skip("this libheif build cannot encode HEIF")
    pillow_heif.register_heif_opener()
    img = gradient_image(64, 48)
    buf = io.BytesIO()
    img.save(buf, format="HEIF", quality=95)
    photo = load_photo(buf.getvalue())
    assert photo.size == (64, 48) and photo.mode == "RGB"
    assert np.abs(np.asarray(photo).astype(int) - np.asarray(img).astype(int)).mean() < 4


def test_heic_orientation_is_applied_once():
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("encoders"):
        pytest.skip("this libheif build cannot encode HEIF")
    pillow_heif.register_heif_opener()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    marked_image(64, 48).save(buf, format="HEIF", quality=95, exif=exif.tobytes())
    photo = load_photo(buf.getvalue())
    assert photo.size == (48, 64)
    assert _red_corner(photo) == "top-right"


def test_multi_picture_jpeg_is_accepted():
    """Phone JPEGs with extra frames (MPO): the first frame, from bytes or from an opened image."""
    buf = io.BytesIO()
    marked_image().save(buf, format="MPO", save_all=True, append_images=[noise_image(60, 40)])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    for src in (buf.getvalue(), Image.open(io.BytesIO(buf.getvalue()))):
        photo = load_photo(src)
        assert photo.size == (60, 40) and _red_corner(photo) == "top-left"


@pytest.mark.parametrize("data", [
    pytest.param(jpeg_bytes(noise_image(200, 150))[:3000], id="truncated-jpeg"),
    pytest.param(b"hello, this is a text file, not a photo\n" * 10, id="text"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, id="broken-png-header"),
])
def test_malformed_input_is_invalid_image(data):
    with pytest.raises(PipelineError) as err:
        load_photo(data)
    assert err.value.code == "invalid_image"
    assert err.value.message


def test_unsupported_formats_are_refused():
    for fmt in ("GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        gradient_image(16, 16).save(buf, format=fmt)
        with pytest.raises(PipelineError) as err:
            load_photo(buf.getvalue())
        assert err.value.code == "invalid_image"
        assert "JPEG, PNG, WebP or HEIC" in err.value.message


@pytest.mark.parametrize("side", [9_000, 100_000])
def test_huge_declared_size_is_refused_from_the_header(side):
    start = time.perf_counter()
    with pytest.raises(PipelineError) as err:
        load_photo(png_with_declared_size(side, side))
    elapsed = time.perf_counter() - start
    assert err.value.code == "invalid_image"
    # Decoding the stub pixel data would fail as "truncated"; a size message means it was never attempted.
    assert "MP" in err.value.message or "too large" in err.value.message, err.value.message
    assert elapsed < 2.0, f"refusing a {side}x{side} header took {elapsed:.2f}s"


def test_max_pixels_is_a_parameter():
    data = jpeg_bytes(noise_image(100, 100))
    assert load_photo(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(PipelineError) as err:
        load_photo(data, max_pixels=9_999)
    assert err.value.code == "invalid_image"


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(PipelineError) as err:
        load_photo(tmp_path / "nope.jpg")
    assert err.value.code == "invalid_image"
    with pytest.raises(PipelineError):
        load_photo(12345)  # type: ignore[arg-type]
