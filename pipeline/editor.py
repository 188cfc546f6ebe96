"""``Editor``: photo → ``Inversion`` → edited full-size photos, the one object the worker and the CLI hold.

Models load lazily on first use, once, under a lock, so a worker process can build its ``Editor`` at start and
share it between threads. Every call takes ``progress(stage, fraction)`` and ``should_cancel()`` (polled between
stages, raising ``Canceled``) and an optional ``metrics`` dict that receives the seconds spent per stage
(``align_seconds``, ``invert_seconds``, ``direction_seconds``, ``synthesize_seconds``, ``paste_seconds``, and
``optimize_seconds`` in optimize mode instead of ``direction_seconds``), so the service can report them without
shared mutable state on the editor.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.bundle import DEV_WARNING, Bundle
from pipeline.errors import INVALID_PARAMETER, Canceled, PipelineError
from pipeline.inversion import Inversion

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
ShouldCancel = Callable[[], bool]
PhotoSource = bytes | str | os.PathLike | Image.Image

MODES = ("global", "optimize")
ENCODER_INPUT = 256  # e4e sees 256² aligned crops whatever the generator size

__all__ = ["Editor", "Inversion", "MODES", "validate_edit"]


@dataclass(frozen=True)
class Models:
    """Everything loaded from a bundle, on one device."""

    generator: torch.nn.Module
    encoder: torch.nn.Module
    clip: torch.nn.Module
    fs3: torch.Tensor
    style_std: torch.Tensor
    identity: torch.nn.Module | None = None  # ArcFace, for optimize mode's identity loss (optional)


class Editor:
    """Edits faces in photos with the models of one ``Bundle``.

    ``directions_dir``: where text directions are cached on disk (default: the bundle's ``cache/directions``).
    A service whose bundle is mounted read-only passes a writable folder; a write that fails anyway is logged
    once and the edit goes on."""

    def __init__(self, bundle: Bundle | str | os.PathLike, device: str | torch.device = "cpu",
                 directions_dir: str | os.PathLike | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.device = torch.device(device)
        self._directions_dir = Path(directions_dir) if directions_dir else self.bundle.cache_dir / "directions"
        self._lock = threading.Lock()
        self._models: Models | None = None
        self._directions = None
        self._versions: dict[str, str] | None = None
        if self.bundle.is_dev:
            log.warning(DEV_WARNING)

    # --- identity of the models --------------------------------------------------------------------------

    @property
    def versions(self) -> dict[str, str]:
        """Short content ids of the model files (12 hex digits of each sha256)."""
        if self._versions is None:
            self._versions = {role: self.bundle.version(role) for role in self.bundle.manifest.models}
        return dict(self._versions)

    @property
    def encoder_version(self) -> str:
        """Changes whenever the encoder file does (e.g. a fine-tuned encoder promoted): the inversion cache key."""
        return self.versions["encoder"]

    @property
    def is_dev(self) -> bool:
        return self.bundle.is_dev

    @property
    def models(self) -> Models:
        """The loaded models (loading them on first access)."""
        if self._models is None:
            with self._lock:
                if self._models is None:
                    self._models = self._load()
        return self._models

    def _load(self) -> Models:
        from pipeline.clip_model import load_clip
        from pipeline.directions import TextDirectionCache
        from pipeline.e4e import load_encoder
        from pipeline.relevance import load_relevance
        from pipeline.stylegan2 import load_generator

        start = time.perf_counter()
        generator = load_generator(self.bundle.path("generator"), self.device).eval().requires_grad_(False)
        encoder = load_encoder(self.bundle.path("encoder"), self.device).eval().requires_grad_(False)
        clip = load_clip(self.bundle.path("clip"), self.device)
        relevance = load_relevance(self.bundle.path("relevance"))
        identity = None
        if self.bundle.has("identity"):
            from pipeline.losses import load_arcface

            identity = load_arcface(self.bundle.path("identity"), self.device)
        self._directions = TextDirectionCache(self._directions_dir, model_id=self.versions["clip"])
        # one untimed render, so that its one-off costs (weight-derived kernels, the CPU path's buffers, the
        # NNPACK self-check: ~1.5 s at 1024² on two cores) fall at load time, not on the first user's edit
        with torch.inference_mode():
            generator(torch.zeros(1, generator.style_dim, device=self.device))
        log.info("models loaded from %s in %.1fs", self.bundle.dir, time.perf_counter() - start)
        return Models(generator, encoder, clip,
                      torch.as_tensor(relevance.fs3, dtype=torch.float32, device=self.device),
                      torch.as_tensor(relevance.style_std, dtype=torch.float32, device=self.device), identity)

    # --- inversion -----------------------------------------------------------------------------------------

    def invert(self, photo: PhotoSource, progress: Progress | None = None, should_cancel: ShouldCancel | None = None,
               metrics: dict[str, float] | None = None) -> Inversion:
        """Find the face in ``photo`` and its W+ codes. Raises ``no_face``, ``face_too_small``, ``invalid_image``."""
        from pipeline.align import align_face
        from pipeline.photo import load_photo

        step = _Stages(progress, should_cancel, metrics)
        raw = _photo_bytes(photo)
        with step("align"):
            image = load_photo(raw)
            alignment = align_face(image, output_size=ENCODER_INPUT)
        models = self.models
        with step("invert"), torch.no_grad():
            x = _to_tensor(alignment.crop, self.device)
            codes = models.encoder(x)[0].float().cpu().numpy()
        return Inversion(codes=codes, quad=np.asarray(alignment.quad, dtype=np.float64), qsize=float(alignment.qsize),
                         n_faces=int(alignment.n_faces), note=str(alignment.note or ""), photo_size=image.size,
                         versions={"encoder": self.encoder_version, "generator": self.versions["generator"]},
                         photo=raw)

    # --- editing -------------------------------------------------------------------------------------------

    def edit(self, inv: Inversion, neutral: str, target: str, alphas: Sequence[float], beta: float = 0.15,
             mode: str = "global", progress: Progress | None = None, should_cancel: ShouldCancel | None = None,
             metrics: dict[str, float] | None = None, steps: int | None = None, *,
             photo: PhotoSource | None = None) -> list[Image.Image]:
        """One full-size edited photo per alpha, in order.

        ``mode="global"``: StyleCLIP global direction (``beta`` = disentanglement threshold, ``alpha`` =
        strength along it). ``mode="optimize"``: StyleCLIP latent optimization for ``steps`` steps (see
        ``pipeline.optimize``; ``beta`` is ignored, alpha interpolates start → optimized latent).
        ``photo``: the photo ``inv`` was computed from, which the edited face is pasted into; needed when ``inv``
        carries none (one read back from bytes), else it replaces ``inv.photo``."""
        from pipeline.directions import apply, style_direction

        if not isinstance(inv, Inversion):
            raise PipelineError(INVALID_PARAMETER, f"expected an Inversion, got {type(inv).__name__}")
        if photo is None and inv.photo is None:
            raise PipelineError(INVALID_PARAMETER, "the inversion carries no photo (it was read back from "
                                                   "bytes): pass the photo it was computed from as photo=")
        raw = _photo_bytes(photo) if photo is not None else inv.photo
        alphas = validate_edit(neutral, target, alphas, beta, mode, steps)
        step = _Stages(progress, should_cancel, metrics)
        models = self.models
        g = models.generator
        if inv.codes.shape != (g.n_latent, g.style_dim):
            raise PipelineError(INVALID_PARAMETER, f"the inversion has codes {inv.codes.shape}, this generator needs "
                                                   f"({g.n_latent}, {g.style_dim}): invert the photo again")
        codes = torch.from_numpy(inv.codes.copy()).to(self.device)[None]
        if mode == "global":
            with step("direction"), torch.no_grad():
                dt = self._directions.get(models.clip, neutral, target).to(self.device)
                direction = style_direction(models.fs3, dt, beta, models.style_std, g.style_dims, g.style_is_torgb)
            with step("synthesize"), torch.no_grad():
                faces = g.synthesize(apply(g.styles(codes), direction, alphas))
        else:
            from pipeline.optimize import OptimizeConfig, optimize_latent

            config = OptimizeConfig() if steps is None else OptimizeConfig(steps=steps)
            with step("optimize"):
                result = optimize_latent(g, models.clip, codes[0], target, config, progress=progress,
                                         should_cancel=should_cancel, identity=models.identity)
            with step("synthesize"), torch.no_grad():
                faces = g(result.interpolate(alphas))
        with step("paste"):
            return self._paste(inv, raw, faces, step)

    def _paste(self, inv: Inversion, raw: bytes, faces: torch.Tensor, step: _Stages) -> list[Image.Image]:
        """Every alpha's face into the full photo; the warp and mask are shared (``paste_back_many``)."""
        from pipeline.paste import paste_back_many
        from pipeline.photo import load_photo

        photo = load_photo(raw)
        if photo.size != inv.photo_size:
            raise PipelineError(INVALID_PARAMETER, f"the photo is {photo.size[0]}x{photo.size[1]}, the inversion "
                                                   f"was computed from a {inv.photo_size[0]}x{inv.photo_size[1]} one")
        step.check()
        return paste_back_many(photo, [Image.fromarray(face) for face in _to_uint8(faces)], inv.quad)


# --- helpers ---------------------------------------------------------------------------------------------------

class _Stages:
    """Times stages into ``metrics``, reports progress, and polls cancellation at every stage boundary."""

    def __init__(self, progress: Progress | None, should_cancel: ShouldCancel | None,
                 metrics: dict[str, float] | None):
        self.progress, self.should_cancel = progress, should_cancel
        self.metrics = metrics if metrics is not None else {}

    def check(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Canceled()

    def report(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, fraction)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.check()
        self.report(stage, 0.0)
        start = time.perf_counter()
        yield
        key = f"{stage}_seconds"
        self.metrics[key] = self.metrics.get(key, 0.0) + time.perf_counter() - start
        self.report(stage, 1.0)


def validate_edit(neutral: str, target: str, alphas: Sequence[float] | float, beta: float = 0.15,
                  mode: str = "global", steps: int | None = None) -> list[float]:
    """Check an edit's parameters without touching a model (callers validate before the costly inversion);
    returns the alphas as floats. Raises ``PipelineError("invalid_parameter")`` naming the problem."""
    from pipeline.directions import MAX_TEXT_CHARS, check_alphas, check_beta
    from pipeline.optimize import OptimizeConfig

    if mode not in MODES:
        raise PipelineError(INVALID_PARAMETER, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for name, text in (("neutral", neutral), ("target", target)):
        if not isinstance(text, str) or not text.strip():
            raise PipelineError(INVALID_PARAMETER, f"{name} text must be a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise PipelineError(INVALID_PARAMETER, f"{name} text is longer than {MAX_TEXT_CHARS} characters")
    if isinstance(alphas, (int, float)):
        alphas = [alphas]
    if any(isinstance(a, bool) for a in alphas):
        raise PipelineError(INVALID_PARAMETER, f"alphas must be numbers, got {alphas!r}")
    try:
        values = [float(a) for a in alphas]
    except (TypeError, ValueError) as exc:
        raise PipelineError(INVALID_PARAMETER, f"alphas must be numbers, got {alphas!r}") from exc
    check_alphas(values)
    if mode == "global":
        check_beta(beta)
    elif steps is not None:
        OptimizeConfig(steps=steps)
    return values


def _photo_bytes(photo: PhotoSource) -> bytes:
    """The original encoded file (held by a fresh Inversion); a PIL image is encoded losslessly as PNG."""
    if isinstance(photo, (bytes, bytearray, memoryview)):
        return bytes(photo)
    if isinstance(photo, Image.Image):
        buf = io.BytesIO()
        photo.save(buf, format="PNG")
        return buf.getvalue()
    path = Path(photo)
    if not path.is_file():
        raise PipelineError("invalid_image", f"no such image file: {path}")
    return path.read_bytes()


def _to_tensor(crop, device: torch.device) -> torch.Tensor:
    """An aligned RGB crop (PIL or uint8 HWC) → ``[1, 3, H, W]`` in [-1, 1], as e4e was trained."""
    a = np.asarray(crop.convert("RGB") if isinstance(crop, Image.Image) else crop, dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1)[None].to(device) / 127.5 - 1


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [-1, 1] → ``[B, H, W, 3]`` uint8 (clamped, rounded)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
