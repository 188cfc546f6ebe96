"""e4e inversion and paste-back against plain ports of the same computation, timed in one run (issue #16 §2).

Each stage is timed against a plain port in the same run, on the same weights and input, in alternation
(``measure_interleaved``), and the ratio is the median of the per-round ratios (``paired_ratio``), as the
synthesis benchmark does. The other work on a shared machine slows both alike, so the ratio holds up better
than either time.

* e4e: the plain port is the module as written (``E4E`` in PyTorch's default contiguous layout). The fast path
  is what ``pipeline.models.e4e.load_encoder`` serves: the same module with weights and activations channels-last, so
  oneDNN's convolutions skip their layout reorders. Profiled at 256² (IR-SE-50): 90 % of that path's time is in
  convolutions, the largest share in the eleven fine style heads (a 512→512 stride-2 3×3 convolution each on
  the 64² features, about 180 GFLOP/s on the 2-core EPYC); BatchNorm is under 1 % and the 1×1 max-pool
  shortcuts about 1 %, and the eleven heads fused into one convolution measured no faster.
* paste-back: the plain port does what research code (STIT, StyleCLIP's notebooks) does: warp the face and its
  mask to the photo's full size with Pillow and blend every pixel in floating point. ``pipeline.faces.paste`` computes
  the same blend in the quad's bounding box only, with OpenCV's warp and Pillow's masked paste. The photo is a
  phone-sized scene: the benchmark photo scaled so that its face is ``PHONE_FACE_PX`` wide, on a
  ``PHONE_SIZE`` canvas, since the cost of the plain port scales with the photo and ours with the face.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import torch
from PIL import Image

from bench.models import Models
from bench.timing import Timing, measure_interleaved, paired_ratio

PHONE_SIZE = (3000, 4000)  # width, height: a 12 MP phone photo
PHONE_FACE_PX = 800        # side of the face quad in it

PORT_KEYS = ("invert_fast_s", "invert_ref_s", "invert_fast_over_ref", "paste_s", "paste_ref_s", "paste_over_ref")


# --- the plain ports ---------------------------------------------------------------------------------------

def plain_encoder(e4e: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``e4e`` in the layout the module is written for (contiguous NCHW)."""
    plain = copy.deepcopy(e4e)
    plain.set_channels_last(False)
    return plain


def served_encoder(e4e: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``e4e`` as ``load_encoder`` serves it (channels-last)."""
    served = copy.deepcopy(e4e)
    served.set_channels_last(True)
    return served


def paste_plain(photo: Image.Image, face: Image.Image, quad: np.ndarray) -> Image.Image:
    """``pipeline.faces.paste.paste_back`` computed the plain way: face and mask warped to the whole photo with
    Pillow's affine transform (bicubic, bilinear), blended over every pixel in float64.

    The same function up to the interpolation kernels and rounding (Pillow's bicubic is a = -0.5, OpenCV's
    a = -0.75): outside the mask the photo is unchanged."""
    from pipeline.faces.paste import DEFAULT_FEATHER, face_mask

    photo = photo.convert("RGB")
    quad = np.asarray(quad, dtype=np.float64)
    side = min(face.size[0], max(8, int(np.ceil(np.hypot(*(quad[3] - quad[0])) * 2))))  # paste's reduction
    if side != face.size[0]:
        face = face.resize((side, side), Image.Resampling.LANCZOS)
    # The face's point f (pixel edges at integers) sits at photo point quad[0] + [ex ey] f / side (quad corners in
    # pixel-centre coordinates); Pillow asks, for the photo pixel centred at edge coordinate e, for the face point
    # at linear @ e + offset.
    linear = np.linalg.inv(np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)) * side
    offset = -linear @ (quad[0] + 0.5)
    coefficients = (*linear[0], offset[0], *linear[1], offset[1])
    warped = face.convert("RGB").transform(photo.size, Image.Transform.AFFINE, coefficients,
                                           Image.Resampling.BICUBIC)
    alpha = face_mask(side, DEFAULT_FEATHER).transform(photo.size, Image.Transform.AFFINE, coefficients,
                                                       Image.Resampling.BILINEAR)
    a = np.asarray(alpha, dtype=np.float64)[..., None] / 255
    blended = np.asarray(photo, dtype=np.float64) * (1 - a) + np.asarray(warped, dtype=np.float64) * a
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB")


def phone_scene(photo: Image.Image, quad: np.ndarray, size: tuple[int, int] = PHONE_SIZE,
                face_px: int = PHONE_FACE_PX) -> tuple[Image.Image, np.ndarray]:
    """``photo`` scaled so that its face quad is ``face_px`` wide, centred on a mid-gray ``size`` canvas, and
    the quad in the canvas' coordinates."""
    quad = np.asarray(quad, dtype=np.float64)
    scale = face_px / float(np.hypot(*(quad[3] - quad[0])))
    scaled = photo.convert("RGB").resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                                         Image.Resampling.BILINEAR)
    centre = quad.mean(axis=0) * scale
    origin = np.rint(np.array(size, dtype=np.float64) / 2 - centre).astype(int)
    canvas = Image.new("RGB", size, (128, 128, 128))
    canvas.paste(scaled, (int(origin[0]), int(origin[1])))
    return canvas, quad * scale + origin


# --- the benchmark -----------------------------------------------------------------------------------------

def bench_ports(models: Models, crop: Image.Image, photo_bytes: bytes, quad: np.ndarray, repeats: int,
                budget: float) -> dict[str, Timing | float]:
    """e4e (on ``crop``) and paste-back (a ``models.generator``-sized face into the phone scene built from
    ``photo_bytes`` and its face ``quad``), each fast against its plain port in alternation.

    Returns ``invert_fast_s``, ``invert_ref_s``, ``paste_s``, ``paste_ref_s`` (``Timing``),
    ``invert_fast_over_ref``, ``paste_over_ref`` (median of per-round ratios), ``paste_photo_megapixels`` and
    ``paste_face_px`` (the scene)."""
    from pipeline.faces.paste import paste_back_many
    from pipeline.faces.photo import load_photo

    x = torch.from_numpy(np.asarray(crop.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    x = (x / 127.5 - 1).to(models.device)
    fast, plain = served_encoder(models.encoder), plain_encoder(models.encoder)

    def invert(encoder: torch.nn.Module):
        def run():
            with torch.no_grad():
                encoder(x)
        return run

    runs = {"fast": invert(fast), "ref": invert(plain)}
    for run in runs.values():  # oneDNN builds its kernels for a layout on the first call: seconds, not a round
        run()
    inversion = measure_interleaved(runs, repeats, budget, models.device)
    del fast, plain

    photo, scene_quad = phone_scene(load_photo(photo_bytes), quad)
    side = models.generator.size
    face = crop.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)  # content does not change timing
    paste = measure_interleaved({"fast": lambda: paste_back_many(photo, [face], scene_quad),
                                 "ref": lambda: paste_plain(photo, face, scene_quad)}, repeats, budget)
    return {"invert_fast_s": inversion["fast"], "invert_ref_s": inversion["ref"],
            "invert_fast_over_ref": paired_ratio(inversion["fast"], inversion["ref"]),
            "paste_s": paste["fast"], "paste_ref_s": paste["ref"],
            "paste_over_ref": paired_ratio(paste["fast"], paste["ref"]),
            "paste_photo_megapixels": photo.width * photo.height / 1e6,
            "paste_face_px": float(np.hypot(*(scene_quad[3] - scene_quad[0])))}


def ports_markdown(device_results: dict) -> list[str]:
    """The report section: ``device_results`` maps a device name to its results, where the ``bench_ports`` keys
    hold seconds or ratios (a ``Timing`` stands for its median). Devices without them are left out; nothing
    measured gives no section."""
    measured = {d: r for d, r in device_results.items() if all(k in r for k in PORT_KEYS)}
    if not measured:
        return []

    def value(v) -> float:
        return v.median if isinstance(v, Timing) else float(v)

    def seconds(v) -> str:
        v = value(v)
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"

    scene = next(iter(measured.values()))
    lines = ["", "## e4e and paste-back against plain ports", "",
             "Each stage against a plain port of the same computation, in the same run on the same weights and "
             "input, alternating (`bench/ports.py`); the ratio is the median of the per-round ratios. e4e: the "
             "module as written (contiguous layout) against the served channels-last layout. Paste-back: "
             "`pipeline.faces.paste` (the face's bounding box only, OpenCV warp, Pillow masked paste) against a "
             "whole-photo Pillow warp and float blend, as research code does it, on a "
             f"{value(scene['paste_photo_megapixels']):.0f} MP photo with a "
             f"{value(scene['paste_face_px']):.0f} px face, one output.", "",
             "| device | e4e served | e4e plain | served / plain | paste-back | plain paste | ours / plain |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for d, r in measured.items():
        lines.append(f"| {d} | {seconds(r['invert_fast_s'])} | {seconds(r['invert_ref_s'])} | "
                     f"{value(r['invert_fast_over_ref']):.2f} | {seconds(r['paste_s'])} | "
                     f"{seconds(r['paste_ref_s'])} | {value(r['paste_over_ref']):.2f} |")
    return lines


def photo_png(image: Image.Image) -> bytes:
    """``image`` as PNG bytes (what ``bench_ports`` takes as a photo)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
