"""Draw the app icons (PNG) with Pillow, so they can be rebuilt without a design tool.

Run: `.venv/bin/python web/icons/make_icons.py` — writes the PNGs next to this file.
Chromium's installability check wants a 192 and a 512 icon; Android masks `maskable` icons to a circle or
squircle, so their glyph stays inside the central 80 % safe zone; iOS uses the 180 px apple-touch-icon.
"""

from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

HERE = Path(__file__).resolve().parent
SUPERSAMPLE = 4  # draw large, then downscale: Pillow's shapes have no anti-aliasing of their own
TOP = (124, 92, 255)  # gradient, top-left → bottom-right (the app's accent)
BOTTOM = (52, 178, 232)
INK = (255, 255, 255)


def _gradient(size: int) -> Image.Image:
    """A diagonal two-colour gradient, size × size RGB."""
    vertical = Image.linear_gradient("L").resize((size, size))
    ramp = ImageChops.add(vertical, vertical.transpose(Image.Transpose.TRANSPOSE), scale=2)
    return Image.composite(Image.new("RGB", (size, size), BOTTOM), Image.new("RGB", (size, size), TOP), ramp)


def _glyph(draw: ImageDraw.ImageDraw, size: int, scale: float) -> None:
    """A smiling face with a sparkle: the app edits faces from text. `scale` is the glyph's share of the icon."""
    c = size / 2
    r = size * scale / 2
    w = max(2, round(r * 0.11))
    draw.ellipse((c - r, c - r, c + r, c + r), outline=INK, width=w)
    eye = r * 0.11
    for dx in (-0.36, 0.36):
        ex, ey = c + dx * r, c - 0.22 * r
        draw.ellipse((ex - eye, ey - eye, ex + eye, ey + eye), fill=INK)
    mouth = (c - 0.5 * r, c - 0.3 * r, c + 0.5 * r, c + 0.55 * r)
    draw.arc(mouth, start=20, end=160, fill=INK, width=w)
    # A four-point sparkle at the top right, the "magic" of the text edit.
    sx, sy, s = c + 0.92 * r, c - 0.92 * r, r * 0.34
    draw.polygon(
        [(sx, sy - s), (sx + s * 0.22, sy - s * 0.22), (sx + s, sy), (sx + s * 0.22, sy + s * 0.22),
         (sx, sy + s), (sx - s * 0.22, sy + s * 0.22), (sx - s, sy), (sx - s * 0.22, sy - s * 0.22)],
        fill=INK,
    )


def make_icon(size: int, maskable: bool) -> Image.Image:
    """One icon: full-bleed for `maskable` (the platform cuts the shape), else a rounded square on transparency."""
    big = size * SUPERSAMPLE
    art = _gradient(big).convert("RGBA")
    _glyph(ImageDraw.Draw(art), big, scale=0.5 if maskable else 0.58)
    if not maskable:
        mask = Image.new("L", (big, big), 0)
        ImageDraw.Draw(mask).rounded_rectangle((0, 0, big - 1, big - 1), radius=big * 0.22, fill=255)
        art.putalpha(mask)
    return art.resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    outputs = {
        "icon-192.png": (192, False),
        "icon-512.png": (512, False),
        "maskable-192.png": (192, True),
        "maskable-512.png": (512, True),
        # iOS draws its own rounded corners and shows transparency as black: give it the full-bleed art.
        "apple-touch-icon.png": (180, True),
        "favicon-32.png": (32, False),
    }
    for name, (size, maskable) in outputs.items():
        icon = make_icon(size, maskable)
        if name == "apple-touch-icon.png":
            icon = icon.convert("RGB")
        icon.save(HERE / name, optimize=True)
        print(f"wrote {HERE / name} ({size}×{size})")


if __name__ == "__main__":
    main()
