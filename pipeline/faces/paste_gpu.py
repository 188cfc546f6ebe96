"""Paste-back where the faces were rendered: on the GPU, for a GPU worker.

``pipeline.faces.paste`` warps and blends on the CPU with OpenCV and Pillow: ~25 ms per output for a 1024² face on a
fast CPU core (resize, warp, masked paste), several times the GPU's render, and serialized by the GIL when
jobs are batched. Here the same geometry (``pipeline.faces.paste``'s placement: box, affine map, mask) runs as
tensor operations on the faces' device: the antialiased reduction, a bicubic ``grid_sample`` over the box, the
masked blend; only the blended box travels to the host, into a copy of the photo.

Same function up to resampling filters (Pillow's LANCZOS reduction vs an antialiased bicubic one): within a
level or two of 8 bits at edges, tested on the CPU against ``paste_back``. A group (several faces of one photo)
blends as ``pipeline.faces.paste.paste_faces`` does, the reference it is tested against; ``paste_group`` is the
one entry for any number of faces on either device.
"""


from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.faces.paste import CORE_EPSILON, DEFAULT_FEATHER, paste_back_many, paste_faces, place


def paste_rendered(photo: Image.Image, faces: torch.Tensor, quad: np.ndarray,
                   feather: float = DEFAULT_FEATHER) -> list[Image.Image]:
    """Rendered faces ``[B, 3, S, S]`` in [-1, 1] (unclamped) pasted through one ``quad``: one full photo each.
    On a GPU the warp and blend run there (``paste_on_device``); on a CPU through ``pipeline.faces.paste``."""
    if faces.device.type == "cpu":
        return paste_back_many(photo, [Image.fromarray(f) for f in to_uint8(faces)], quad, feather)
    return paste_on_device(photo, faces, quad, feather)


def paste_group(photo: Image.Image, faces: torch.Tensor, quads: Sequence[np.ndarray],
                feather: float = DEFAULT_FEATHER) -> Image.Image:
    """The faces of one photo ``[F, 3, S, S]`` in [-1, 1] (unclamped), face ``i`` through ``quads[i]``, blended
    into one copy of ``photo``: on the faces' device when it is a GPU (``paste_faces_on_device``), else through
    ``pipeline.faces.paste.paste_faces``. One face is exactly the single-face paste of that device."""
    if faces.device.type == "cpu":
        return paste_faces(photo, [Image.fromarray(f) for f in to_uint8(faces)], quads, feather)
    return paste_faces_on_device(photo, faces, quads, feather)


def to_uint8(faces: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [-1, 1] → ``[B, H, W, 3]`` uint8 on the host (clamped, rounded)."""
    return _levels(faces).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _levels(faces: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [-1, 1] → the 8-bit levels 0..255 (clamped, rounded), as float32 on their device."""
    return ((faces.detach().float().clamp(-1, 1) + 1) * 127.5).round()


def paste_on_device(photo: Image.Image, faces: torch.Tensor, quad: np.ndarray,
                    feather: float = DEFAULT_FEATHER) -> list[Image.Image]:
    """``paste_back_many`` computed on ``faces``' device (any device; the CPU too, for tests)."""
    photo = photo if photo.mode == "RGB" else photo.convert("RGB")
    quad = np.asarray(quad, dtype=np.float64)
    if faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[2] != faces.shape[3]:
        raise ValueError(f"faces must be [B, 3, S, S], got {list(faces.shape)}")
    placement = place(quad, photo.size, faces.shape[-1], feather)
    if placement is None:  # the quad lies entirely outside the photo
        return [photo.copy() for _ in range(faces.shape[0])]
    device = faces.device
    with torch.no_grad():
        warped = _warp(_levels(faces), placement)  # the CPU path reads 8-bit faces: round the same way first
        box = placement.box
        base = torch.from_numpy(np.array(photo.crop(box))).to(device).permute(2, 0, 1).float()
        mask = torch.from_numpy(placement.mask).to(device).float()
        blended = ((warped * mask + base * (255 - mask)) / 255).round().to(torch.uint8)
        regions = blended.permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for region in regions:
        result = photo.copy()
        result.paste(Image.fromarray(region, "RGB"), box[:2])
        out.append(result)
    return out


def paste_faces_on_device(photo: Image.Image, faces: torch.Tensor, quads: Sequence[np.ndarray],
                          feather: float = DEFAULT_FEATHER) -> Image.Image:
    """``paste_faces`` computed on ``faces``' device (any device; the CPU too, for tests): where masks overlap
    each face weighs ``m / (1 - m)``, normalized, and the photo shows through by the product of ``1 - m``."""
    photo = photo if photo.mode == "RGB" else photo.convert("RGB")
    if faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[2] != faces.shape[3]:
        raise ValueError(f"faces must be [F, 3, S, S], got {list(faces.shape)}")
    if len(faces) != len(quads):
        raise ValueError(f"{len(faces)} faces and {len(quads)} quads")
    if len(faces) == 1:
        return paste_on_device(photo, faces, quads[0], feather)[0]
    device, layers = faces.device, []
    with torch.no_grad():
        pixels = _levels(faces)
        for face, quad in zip(pixels, quads, strict=True):
            quad = np.asarray(quad, dtype=np.float64)
            if quad.shape != (4, 2) or not np.all(np.isfinite(quad)):
                raise ValueError(f"quad must be a finite [4, 2] array, got shape {quad.shape}")
            placement = place(quad, photo.size, faces.shape[-1], feather)
            if placement is not None:
                layers.append((placement, _warp(face[None], placement)[0]))
        if not layers:
            return photo.copy()
        left, top = min(p.box[0] for p, _ in layers), min(p.box[1] for p, _ in layers)
        right, bottom = max(p.box[2] for p, _ in layers), max(p.box[3] for p, _ in layers)
        base = torch.from_numpy(np.array(photo.crop((left, top, right, bottom)))).to(device).permute(2, 0, 1).float()
        weighted, weights = torch.zeros_like(base), base.new_zeros(base.shape[1:])
        uncovered = base.new_ones(base.shape[1:])
        for placement, warped in layers:
            x0, y0, x1, y1 = placement.box
            window = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
            m = torch.from_numpy(placement.mask).to(device).float() / 255
            w = m / (1 - m + CORE_EPSILON)
            weighted[(slice(None), *window)] += w * warped
            weights[window] += w
            uncovered[window] *= 1 - m
        blend = weighted / weights.clamp_min(CORE_EPSILON)
        mixed = base * uncovered + blend * (1 - uncovered)
        region = mixed.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    result = photo.copy()
    result.paste(Image.fromarray(region, "RGB"), (left, top))
    return result


def _warp(pixels: torch.Tensor, placement) -> torch.Tensor:
    """8-bit levels ``[B, 3, S, S]`` reduced to the placement's side and warped into its box ``[B, 3, h, w]``."""
    if placement.side != pixels.shape[-1]:
        pixels = F.interpolate(pixels, size=(placement.side, placement.side), mode="bicubic",
                               antialias=True).clamp(0, 255).round()
    grid = _grid(placement, pixels.device).expand(len(pixels), -1, -1, -1)
    return F.grid_sample(pixels, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0, 255).round()


def _grid(placement, device: torch.device) -> torch.Tensor:
    """``grid_sample``'s sampling grid ``[1, h, w, 2]``: each box pixel's point in the (reduced) face, in
    [-1, 1] with pixel centres at ``(2i + 1) / side - 1`` (``align_corners=False``). Built on the device (a
    phone photo's face box is a million points); float32 is exact to 1/4000 of a pixel here."""
    width, height = placement.region
    warp = torch.as_tensor(placement.warp, dtype=torch.float32, device=device)
    xs = torch.arange(width, dtype=torch.float32, device=device)[None, :]
    ys = torch.arange(height, dtype=torch.float32, device=device)[:, None]
    fx = warp[0, 0] * xs + warp[0, 1] * ys + warp[0, 2]
    fy = warp[1, 0] * xs + warp[1, 1] * ys + warp[1, 2]
    return torch.stack([(2 * fx + 1) / placement.side - 1, (2 * fy + 1) / placement.side - 1], dim=-1)[None]
