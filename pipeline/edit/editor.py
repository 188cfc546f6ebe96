"""``Editor``: photo → ``Inversion`` → edited full-size photos, the one object the worker and the CLI hold.

Models load lazily on first use, once, under a lock, so a worker process can build its ``Editor`` at start and
share it between threads. Every call takes ``progress(stage, fraction)`` and ``should_cancel()`` (polled between
stages, raising ``Canceled``) and an optional ``metrics`` dict that receives the seconds spent per stage
(``align_seconds``, ``invert_seconds``, ``direction_seconds``, ``synthesize_seconds``, ``paste_seconds``, and
``optimize_seconds`` in optimize mode instead of ``direction_seconds``), so the service can report them without
shared mutable state on the editor.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.edit.directions import Change
from pipeline.edit.inversion import Inversion, PendingInversion
from pipeline.edit.params import (
    INVERSIONS,
    MODES,
    check_inversions,
    check_order,
    validate_edit,
    validate_render,
)
from pipeline.edit.stages import Progress, ShouldCancel, Stages
from pipeline.errors import INVALID_PARAMETER, MODEL_MISSING, PipelineError
from pipeline.faces.detect import FaceBox
from pipeline.render.batching import RenderBatcher
from pipeline.render.config import RenderConfig
from pipeline.render.fuser import FuserRenderer
from pipeline.render.renderer import Renderer
from pipeline.weights.bundle import DEV_WARNING, Bundle

log = logging.getLogger(__name__)

PhotoSource = bytes | str | os.PathLike | Image.Image

ENCODER_INPUT = 256  # e4e sees 256² aligned crops whatever the generator size
FFHQ_TRANSFORM = 4  # FFHQ's QUAD warp is 4× the output size (4096 for 1024): SFE's crops are aligned so

FACES_REMEMBERED = 8  # photos whose detections the editor keeps (a group edit inverts each face of one photo)
# The preview is the photo at most this long on its longer side (a phone screen's width in device pixels): the
# 256² face upscaled into it is as sharp as it gets, and pasting, encoding and sending it stays cheap.
PREVIEW_MAX_SIDE = 1024

__all__ = ["Change", "Editor", "FaceBox", "Inversion", "MODES", "Output", "Preview", "render_order",
           "validate_edit", "validate_render"]


@dataclass(frozen=True)
class Models:
    """Everything loaded from a bundle, on one device."""

    generator: torch.nn.Module
    encoder: torch.nn.Module
    clip: torch.nn.Module
    fs3: torch.Tensor
    style_std: torch.Tensor
    renderer: Renderer          # the generator's styles → images, by the fastest path that fits
    identity: torch.nn.Module | None = None  # ArcFace, for optimize mode's identity loss (optional)
    sfe: torch.nn.Module | None = None  # StyleFeatureEditor, for inversion="sfe" (optional)
    batcher: RenderBatcher | None = None  # renders of threads sharing this Editor, together (RenderConfig.batch_max)
    sfe_fuser: FuserRenderer | None = None  # SFE's fuser and Feature Editor by the device's fast path
    sfe_editor: FuserRenderer | None = None


class Editor:
    """Edits faces in photos with the models of one ``Bundle``.

    ``directions_dir``: where text directions are cached on disk (default: the bundle's ``cache/directions``).
    A service whose bundle is mounted read-only passes a writable folder; a write that fails anyway is logged
    once and the edit goes on. ``render``: how the generator renders (the worker builds it from its settings)."""

    def __init__(self, bundle: Bundle | str | os.PathLike, device: str | torch.device = "cpu",
                 directions_dir: str | os.PathLike | None = None, render: RenderConfig | None = None,
                 on_render_batch: Callable[[int, bool], None] | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.on_render_batch = on_render_batch  # (faces, retried) after each batched render (the worker's metrics)
        self.device = torch.device(device)
        self.render_config = render if render is not None else RenderConfig()
        self._directions_dir = Path(directions_dir) if directions_dir else self.bundle.cache_dir / "directions"
        self._lock = threading.Lock()
        self._models: Models | None = None
        self._directions = None
        self._versions: dict[str, str] | None = None
        self._faces: OrderedDict[str, list] = OrderedDict()
        self._faces_lock = threading.Lock()
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
    def inversions(self) -> tuple[str, ...]:
        """The inverters this bundle can run (``sfe`` needs its optional model)."""
        return tuple(name for name in INVERSIONS if name != "sfe" or self.bundle.has("sfe"))

    def check_inversion(self, inversion: str) -> None:
        """PipelineError unless this bundle can invert with ``inversion``: before any work, so a service refuses
        an edit it cannot run before it aligns or inverts anything."""
        if inversion not in INVERSIONS:
            raise PipelineError(INVALID_PARAMETER, f"inversion must be one of {', '.join(INVERSIONS)}, "
                                                   f"got {inversion!r}")
        if inversion not in self.inversions:
            raise PipelineError(MODEL_MISSING, f"inversion sfe needs the SFE model, which the bundle in "
                                               f"{self.bundle.dir} does not have (`python -m pipeline download "
                                               f"--only sfe` adds it)")

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

    def warm_up(self) -> float:
        """Load the models and render one face, so the first job pays none of the one-time costs (on a CPU the
        renderer's derived weights and NNPACK's check, on a GPU the precision choice and the batch-1 CUDA
        graph); returns the seconds it took."""
        start = time.perf_counter()
        g = self.models.generator
        with torch.no_grad():
            self.models.renderer(torch.zeros(1, g.n_latent, g.style_dim, device=self.device))
            if self.models.batcher is not None and self.device.type == "cuda":
                # each batch size's graph is recorded now, not in the middle of the first jobs that meet
                from pipeline.render.cuda import GRAPH_BATCHES

                for batch in GRAPH_BATCHES[1:]:
                    if batch <= self.render_config.batch_max:
                        self.models.renderer(torch.zeros(batch, g.n_latent, g.style_dim, device=self.device))
        return time.perf_counter() - start

    def _load(self) -> Models:
        from pipeline.edit.directions import COMMON_NEUTRAL, TextDirectionCache
        from pipeline.edit.relevance import load_relevance
        from pipeline.models.clip_model import load_clip
        from pipeline.models.e4e import load_encoder
        from pipeline.models.stylegan2 import load_generator

        start = time.perf_counter()
        generator = load_generator(self.bundle.path("generator"), self.device).eval().requires_grad_(False)
        encoder = load_encoder(self.bundle.path("encoder"), self.device).eval().requires_grad_(False)
        clip = load_clip(self.bundle.path("clip"), self.device)
        relevance = load_relevance(self.bundle.path("relevance"))
        identity = None
        if self.bundle.has("identity"):
            from pipeline.models.arcface import load_arcface

            identity = load_arcface(self.bundle.path("identity"), self.device)
        sfe = None
        if self.bundle.has("sfe"):
            from pipeline.models.sfe import load_sfe

            sfe = load_sfe(self.bundle.path("sfe"), self.device).requires_grad_(False)
        self._directions = TextDirectionCache(self._directions_dir, model_id=self.versions["clip"])
        self._directions.embeddings(clip, [COMMON_NEUTRAL])  # so a new pair embeds only its target
        renderer = Renderer(generator, self.render_config)
        # one untimed render, so that its one-off costs (weight-derived kernels, the CPU path's buffers, the
        # NNPACK self-check: ~1.5 s at 1024² on two cores) fall at load time, not on the first user's edit
        with torch.inference_mode():
            renderer(torch.zeros(1, generator.style_dim, device=self.device))
        log.info("models loaded from %s in %.1fs", self.bundle.dir, time.perf_counter() - start)
        config = self.render_config
        batcher = (RenderBatcher(renderer, config.batch_max, config.batch_wait_ms / 1000, on_batch=self.on_render_batch)
                   if config.batching else None)
        fusers = (None, None) if sfe is None else (FuserRenderer(sfe.inverter.fuser, config.nnpack),
                                                   FuserRenderer(sfe.feature_editor, config.nnpack))
        return Models(generator, encoder, clip,
                      torch.as_tensor(relevance.fs3, dtype=torch.float32, device=self.device),
                      torch.as_tensor(relevance.style_std, dtype=torch.float32, device=self.device), renderer,
                      identity, sfe, batcher, *fusers)

    # --- faces -------------------------------------------------------------------------------------------

    def detect(self, photo: PhotoSource) -> list[FaceBox]:
        """Every face in ``photo``, largest first (``FaceBox.index`` is what ``invert(face=)`` takes)."""
        from pipeline.faces.detect import face_boxes
        from pipeline.faces.photo import load_photo

        raw = _photo_bytes(photo)
        image = load_photo(raw)
        return face_boxes(self._find_faces(raw, image), image.size)

    def _find_faces(self, raw: bytes, image: Image.Image) -> list:
        """``detect.find_faces`` of a photo, remembered for the last few photos: inverting several faces of one
        photo (a group edit) detects once, and ``detect`` and ``invert`` always agree on the order."""
        from pipeline.faces.detect import find_faces

        key = hashlib.sha256(raw).hexdigest()
        with self._faces_lock:
            if key in self._faces:
                self._faces.move_to_end(key)
                return self._faces[key]
        faces = find_faces(image)
        with self._faces_lock:
            self._faces[key] = faces
            while len(self._faces) > FACES_REMEMBERED:
                self._faces.popitem(last=False)
        return faces

    def check_texts(self, changes: Sequence[Change]) -> None:
        """The changes' texts fit CLIP (``invalid_parameter`` naming one that does not): what ``render`` would
        find only after the inversion."""
        from pipeline.edit.directions import check_fits

        check_fits(self.models.clip, [text for change in changes for text in (change.neutral, change.target)])

    def prefetch_directions(self, changes: Sequence[Change]) -> None:
        """Start computing the changes' text directions on a thread, so that a new text pair's CLIP work runs
        while the photo is inverted (``render`` waits for them, or raises their error); cached ones cost
        nothing. For ``mode="global"``, after ``check_texts``."""
        models = self.models
        for change in changes:
            self._directions.prefetch(models.clip, change.neutral, change.target)

    # --- inversion -----------------------------------------------------------------------------------------

    def invert(self, photo: PhotoSource, face: int = 0, progress: Progress | None = None,
               should_cancel: ShouldCancel | None = None, metrics: dict | None = None,
               inversion: str = INVERSIONS[0], faces: Sequence[FaceBox] | None = None,
               staged: bool = False) -> Inversion | PendingInversion:
        """Face number ``face`` of ``detect(photo)`` (0 = the largest) and its W+ codes, by the ``inversion``
        inverter (one of ``INVERSIONS``). ``faces``: ``detect(photo)``'s answer kept since (the service stores
        it at upload), so the photo is not searched again (~150 ms on two cores); their landmarks must be
        there (``invalid_parameter`` otherwise). ``staged`` (e4e only; SFE's is always whole): a
        ``PendingInversion`` with the rows a render's preview reads, for a ``render`` with ``on_preview``,
        which finishes it after the preview is shown (its ``finish()`` is the inversion to keep).

        Raises ``no_face`` (none found), ``invalid_parameter`` (``face`` out of range, naming the valid range),
        ``face_too_small``, ``invalid_image``. ``metrics`` gets the stage totals and an entry for this face in
        ``metrics["faces"]`` (``index``, ``align_seconds``, ``invert_seconds``)."""
        from pipeline.faces.align import align_face
        from pipeline.faces.detect import detected_faces, face_boxes
        from pipeline.faces.photo import load_photo

        if isinstance(face, bool) or not isinstance(face, int) or face < 0:
            raise PipelineError(INVALID_PARAMETER, f"face must be a face index >= 0, got {face!r}")
        self.check_inversion(inversion)
        own: dict[str, float] = {}
        step = Stages(progress, should_cancel, own)
        raw = _photo_bytes(photo)
        models = self.models
        # SFE reads the crop at the generator's size, FFHQ-aligned, as it was trained (then resized to 256²)
        size, transform = (models.generator.size, FFHQ_TRANSFORM * models.generator.size) if inversion == "sfe" \
            else (ENCODER_INPUT, None)
        with step("align"):
            image = load_photo(raw)
            found = detected_faces(faces) if faces is not None else self._find_faces(raw, image)
            alignment = align_face(image, output_size=size, transform_size=transform, face=face, faces=found)
        versions = {"encoder": self.encoder_version, "generator": self.versions["generator"]}
        with step("invert"), torch.no_grad():
            x = _to_tensor(alignment.crop, self.device)
            if inversion == "sfe":
                fields = self._invert_sfe(x)
                versions["sfe"] = self.versions["sfe"]
            elif staged and models.renderer.preview_rows < models.generator.n_latent:
                ready, rest = models.encoder.staged(x, models.renderer.preview_rows)
                fields = {"ready": ready[0].float().cpu().numpy(), "n_latent": models.generator.n_latent,
                          "rest": lambda: rest()[0].float().cpu().numpy()}
            else:
                fields = {"codes": models.encoder(x)[0].float().cpu().numpy()}
        _record_face(metrics, face, own)
        kind = PendingInversion if "ready" in fields else Inversion
        return kind(**fields, quad=np.asarray(alignment.quad, dtype=np.float64), qsize=float(alignment.qsize),
                    n_faces=int(alignment.n_faces), note=str(alignment.note or ""), photo_size=image.size,
                    versions=versions, face_index=face, box=face_boxes(found, image.size)[face].box, photo=raw)

    def _invert_sfe(self, crop: torch.Tensor) -> dict:
        """SFE's W+ and fused feature, and e4e's W+ of the same 256² input, as the reference computes them
        (``pipeline/models/sfe.py``): e4e's codes there take the generator's mean W, as SFE's do."""
        from pipeline.edit.inversion import FEATURE_DTYPE
        from pipeline.models.sfe import inverter_input

        models = self.models
        g, e4e = models.generator, models.encoder
        x = inverter_input(crop)
        # the 64² feature and the fuser through the render layer (the device's fast paths)
        inversion = models.sfe.invert(x, g, feature=models.renderer.feature, fuse=models.sfe_fuser.merge)
        latent_avg = g.latent_avg if g.latent_avg.numel() else e4e.latent_avg
        return {"inverter": "sfe", "codes": (e4e(x) + (latent_avg - e4e.latent_avg))[0].float().cpu().numpy(),
                "sfe_codes": inversion.wplus[0].float().cpu().numpy(),
                "feature": inversion.fused[0].cpu().numpy().astype(FEATURE_DTYPE)}

    # --- editing -------------------------------------------------------------------------------------------

    def edit(self, inv: Inversion, neutral: str, target: str, alphas: Sequence[float], beta: float = 0.15,
             mode: str = "global", progress: Progress | None = None, should_cancel: ShouldCancel | None = None,
             metrics: dict | None = None, steps: int | None = None, *,
             photo: PhotoSource | None = None) -> list[Image.Image]:
        """One full-size edited photo per alpha, in order: ``render`` with one face and one change.

        ``photo``: the photo ``inv`` was computed from; needed when ``inv`` carries none (one read back from
        bytes), else it replaces ``inv.photo``."""
        if not isinstance(inv, Inversion):
            raise PipelineError(INVALID_PARAMETER, f"expected an Inversion, got {type(inv).__name__}")
        if photo is None and inv.photo is None:
            raise PipelineError(INVALID_PARAMETER, "the inversion carries no photo (it was read back from "
                                                   "bytes): pass the photo it was computed from as photo=")
        values = validate_edit(neutral, target, alphas, beta, mode, steps)
        outputs = self.render(photo, [inv], [Change(neutral, target)], values, beta=beta, mode=mode, steps=steps,
                              progress=progress, should_cancel=should_cancel, metrics=metrics,
                              order=range(len(values)), likeness=False)
        return [output.image for output in outputs]

    def render(self, photo: PhotoSource | None, inversions: Sequence[Inversion], changes: Sequence[Change],
               alphas: Sequence[float], beta: float = 0.15, mode: str = "global", steps: int | None = None,
               progress: Progress | None = None, should_cancel: ShouldCancel | None = None,
               metrics: dict | None = None, on_output: Callable[[Output], None] | None = None,
               order: Sequence[int] | None = None, *, likeness: bool = True,
               on_preview: Callable[[Preview], None] | None = None) -> list[Output]:
        """Every chosen face of ``photo`` edited by the combined ``changes``, one full photo per alpha.

        ``inversions``: one per face (``invert(photo, face=i)``), all of this photo. ``mode="global"``: the
        weighted sum of each change's StyleCLIP global direction at ``beta``, scaled by each alpha.
        ``mode="optimize"``: one change only, StyleCLIP latent optimization per face (``steps``).
        Strengths render in ``order`` (default ``render_order``: the middle one first, then outwards) and
        ``on_output`` is called with each ``Output`` as soon as its photo is pasted; the list returned is in
        alpha order. ``likeness`` per face when the bundle has an ``identity`` model (and ``likeness`` is
        true), else None. ``metrics``: stage totals plus ``first_output_seconds`` and an entry per face in
        ``metrics["faces"]``.

        ``on_preview``: the first strength renders with a preview (``Renderer.render_with_preview``: the
        generator's own 256² RGB output of the same render, which then goes on to 1024²), pasted into the
        photo scaled to at most ``PREVIEW_MAX_SIDE`` (same aspect ratio, so it can stand in the full photo's
        box) and handed to ``on_preview`` before the rest renders; ``metrics["first_preview_seconds"]``."""
        from pipeline.faces.photo import load_photo

        start = time.perf_counter()
        alphas, changes = validate_render(changes, alphas, beta, mode, steps)
        inversions = check_inversions(inversions)
        order = render_order(len(alphas)) if order is None else check_order(order, len(alphas))
        raw = _photo_bytes(photo) if photo is not None else inversions[0].photo
        if raw is None:
            raise PipelineError(INVALID_PARAMETER, "the inversion carries no photo (it was read back from "
                                                   "bytes): pass the photo it was computed from as photo=")
        step = Stages(progress, should_cancel, metrics)
        models = self.models
        g = models.generator
        for inv in inversions:
            shape = _codes(inv).shape
            if shape != (g.n_latent, g.style_dim):
                raise PipelineError(INVALID_PARAMETER, f"the inversion has codes {shape}, this generator "
                                                       f"needs ({g.n_latent}, {g.style_dim}): invert the photo again")
        # an inversion still finishing its last rows finishes after the preview, which does not read them;
        # without a preview (or where the preview needs them) it finishes now
        staged = mode == "global" and on_preview is not None \
            and all(inv.ready.shape[0] >= models.renderer.preview_rows for inv in inversions if _pending(inv))
        if not staged:
            inversions = self._finish(inversions, step)
        image = load_photo(raw)
        for inv in inversions:
            if image.size != inv.photo_size:
                raise PipelineError(INVALID_PARAMETER, f"the photo is {image.size[0]}x{image.size[1]}, the "
                                                       f"inversion was computed from a {inv.photo_size[0]}x"
                                                       f"{inv.photo_size[1]} one")
        sfe = _sfe_inversions(inversions, mode, models.sfe)
        codes = torch.from_numpy(np.stack([_codes(inv) for inv in inversions])).to(self.device)
        latents = self._latents(codes, changes, alphas, beta, mode, steps, step, progress, should_cancel, sfe)
        identity = models.identity if likeness else None
        originals = None  # the original faces' identity embeddings: after the preview, which does not need them
        outputs: list[Output | None] = [None] * len(alphas)
        with self._rendering():  # this call is one of the batcher's callers while its strengths render
            for done, i in enumerate(order):
                with step("synthesize", report=False), torch.no_grad():
                    styles, feature = latents(i)
                    if done > 0 or on_preview is None:
                        faces = self._synthesize(styles, feature, should_cancel)
                    else:  # the first strength, shown at 256² before it goes on to the full size
                        stages = models.renderer.render_with_preview(styles, feature)
                        _, small = next(stages)
                if done == 0 and on_preview is not None:
                    with step("paste", report=False):
                        preview = Preview(index=i, alpha=alphas[i],
                                          image=self._paste_preview(image, inversions, small))
                    if metrics is not None:
                        metrics["first_preview_seconds"] = time.perf_counter() - start
                    on_preview(preview)
                    later = None
                    if any(_pending(inv) for inv in inversions):
                        inversions = self._finish(inversions, step)
                        latents = latents.with_codes(
                            torch.from_numpy(np.stack([inv.codes for inv in inversions])).to(self.device))
                        later = latents(i)[0]
                    with step("synthesize", report=False), torch.no_grad():
                        _, faces = stages.send(later)
                with step("paste", report=False):
                    pasted = self._paste(image, inversions, faces)
                score = None
                if identity is not None:
                    if originals is None:
                        originals = self._embed_originals(image, inversions, identity, step)
                    with step("likeness", report=False), torch.no_grad():
                        embedded = identity.embed(faces.float().clamp(-1, 1))
                        score = tuple(float(v) for v in (embedded * originals).sum(1))
                outputs[i] = Output(index=i, alpha=alphas[i], image=pasted, likeness=score)
                if done == 0 and metrics is not None:
                    metrics["first_output_seconds"] = time.perf_counter() - start
                # one strength = one more share of synthesis; paste completes with the last strength
                step.report("synthesize", (done + 1) / len(order))
                if on_output is not None:
                    on_output(outputs[i])
        step.report("paste", 1.0)
        for inv in inversions:
            _record_face(metrics, inv.face_index, {})
        return outputs

    def _rendering(self):
        """While one call renders its strengths, it counts as a caller of the shared batcher (so a lone job's
        renders go at once, without waiting for company that is not coming)."""
        batcher = self.models.batcher
        return batcher.active() if batcher is not None else contextlib.nullcontext()

    def _latents(self, codes: torch.Tensor, changes: list[Change], alphas: list[float], beta: float, mode: str,
                 steps: int | None, step: Stages, progress: Progress | None, should_cancel: ShouldCancel | None,
                 sfe: list[Inversion] | None = None) -> Callable[[int], Rendered]:
        """What renders alpha number ``i``: the style vectors (one row per face) and SFE's injected feature (or
        None), for ``Renderer.render``. The direction (or optimization) is computed here, once for all alphas;
        ``sfe``: the faces' SFE inversions (global mode only)."""
        from pipeline.edit.directions import combine, style_direction

        models = self.models
        g = models.generator
        if mode == "global":
            with step("direction"), torch.no_grad():
                parts = []
                for change in changes:
                    dt = self._directions.get(models.clip, change.neutral, change.target).to(self.device)
                    parts.append(style_direction(models.fs3, dt, beta, models.style_std, g.style_dims,
                                                 g.style_is_torgb))
                direction = combine(parts, [change.weight for change in changes])
                styles = [g.styles(codes[f:f + 1]) for f in range(codes.shape[0])]
            if sfe is not None:
                return self._sfe_faces(direction, styles, sfe, alphas)
            return GlobalFaces(g, direction, styles, alphas)

        from pipeline.edit.optimize import OptimizeConfig, optimize_latent

        config = OptimizeConfig() if steps is None else OptimizeConfig(steps=steps)
        results = []
        with step("optimize"):
            for f in range(codes.shape[0]):
                results.append(optimize_latent(g, models.clip, codes[f], changes[0].target, config, progress=progress,
                                               should_cancel=should_cancel, identity=models.identity))

        def optimized_faces(i: int) -> Rendered:
            return g.styles(torch.cat([r.interpolate([alphas[i]]) for r in results])), None

        return optimized_faces

    def _finish(self, inversions: list, step: Stages) -> list[Inversion]:
        """Every inversion whole: a ``PendingInversion``'s last rows computed (its ``finish``)."""
        if not any(_pending(inv) for inv in inversions):
            return inversions
        with step("invert", report=False), torch.no_grad():
            return [inv.finish() if _pending(inv) else inv for inv in inversions]

    def _synthesize(self, styles: list[torch.Tensor], feature: torch.Tensor | None,
                    should_cancel: ShouldCancel | None) -> torch.Tensor:
        """One strength's faces from their styles (and SFE's feature): through the batcher, with other jobs'
        renders, when this Editor batches (a GPU worker running several jobs), else by the renderer directly."""
        models = self.models
        if models.batcher is None or feature is not None or torch.is_grad_enabled():
            return models.renderer.render(styles, feature)
        return models.batcher.render(styles, should_cancel)

    def _sfe_faces(self, direction, e4e_styles: list[list[torch.Tensor]], inversions: list[Inversion],
                   alphas: list[float]) -> Callable[[int], Rendered]:
        """StyleFeatureEditor's edit: the direction added to SFE's styles (and to e4e's, whose 64² feature the
        generator knows: how the edit moves it is the Feature Editor's input), rendered from the edited feature
        (``pipeline/models/sfe.py``). The unedited e4e feature is rendered once for all strengths."""
        from pipeline.edit.directions import apply

        g, sfe, renderer = self.models.generator, self.models.sfe, self.models.renderer
        with torch.no_grad():
            fused = torch.from_numpy(np.stack([inv.feature for inv in inversions])).to(self.device, torch.float32)
            resolution = fused.shape[-1]
            styles = [g.styles(torch.from_numpy(inv.sfe_codes.copy())[None].to(self.device)) for inv in inversions]
            e4e_feature, _ = renderer.feature(_faces_batch(e4e_styles), resolution)

        def sfe_faces(i: int) -> Rendered:
            edited = _faces_batch([apply(s, direction, [alphas[i]]) for s in styles])
            e4e_edited = _faces_batch([apply(s, direction, [alphas[i]]) for s in e4e_styles])
            delta = e4e_feature - renderer.feature(e4e_edited, resolution)[0]
            return edited, sfe.edit_feature(fused, delta, edit=self.models.sfe_editor.merge)

        return sfe_faces

    def _embed_originals(self, image: Image.Image, inversions: list[Inversion], identity: torch.nn.Module,
                         step: Stages) -> torch.Tensor:
        """The identity embedding of each original aligned face ``[faces, 512]`` (what likeness compares to)."""
        from pipeline.faces.align import align_crop

        with step("likeness", report=False), torch.no_grad():
            crops = torch.cat([_to_tensor(align_crop(image, inv.quad, ENCODER_INPUT), self.device)
                               for inv in inversions])
            return identity.embed(crops)

    def _paste(self, image: Image.Image, inversions: list[Inversion], faces: torch.Tensor) -> Image.Image:
        """All faces of one strength into the full photo, on the GPU when the faces are there (one face: exactly
        the single-face paste)."""
        from pipeline.faces.paste_gpu import paste_group

        return paste_group(image, faces, [inv.quad for inv in inversions])

    def _paste_preview(self, image: Image.Image, inversions: list[Inversion], faces: torch.Tensor) -> Image.Image:
        return paste_preview(image, faces, [inv.quad for inv in inversions])


class GlobalFaces:
    """What renders alpha number ``i`` in global mode: the faces' style vectors plus ``alphas[i]`` times the
    direction (one row per face), no injected feature."""

    def __init__(self, g, direction, styles: list[list[torch.Tensor]], alphas: list[float]):
        self.g, self.direction, self.styles, self.alphas = g, direction, styles, alphas

    def __call__(self, i: int) -> Rendered:
        from pipeline.edit.directions import apply

        per_face = [apply(s, self.direction, [self.alphas[i]]) for s in self.styles]
        return [torch.cat(layer) for layer in zip(*per_face, strict=True)], None

    def with_codes(self, codes: torch.Tensor) -> GlobalFaces:
        """The same edit of other W+ codes (``[faces, n_latent, dim]``): an inversion finished after its preview."""
        return GlobalFaces(self.g, self.direction, [self.g.styles(codes[f:f + 1]) for f in range(codes.shape[0])],
                           self.alphas)


def _pending(inversion) -> bool:
    return isinstance(inversion, PendingInversion)


def _codes(inversion) -> np.ndarray:
    """The W+ codes to render from: a pending inversion's ready rows with placeholders for the rest."""
    return inversion.preview_codes() if _pending(inversion) else inversion.codes


def paste_preview(image: Image.Image, faces: torch.Tensor, quads: Sequence[np.ndarray]) -> Image.Image:
    """A preview's faces (the 256² skip images ``[F,3,r,r]``) pasted into the photo scaled to
    ``preview_size``, the quads scaled with it."""
    from pipeline.faces.paste_gpu import paste_group

    size = preview_size(image.size)
    scale = np.array([size[0] / image.size[0], size[1] / image.size[1]])
    small = image if size == image.size else image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return paste_group(small, faces, [np.asarray(quad) * scale for quad in quads])


def preview_size(size: tuple[int, int]) -> tuple[int, int]:
    """A preview's width and height for a photo of ``size``: the same aspect ratio, the longer side at most
    ``PREVIEW_MAX_SIDE`` (never enlarged)."""
    scale = min(1.0, PREVIEW_MAX_SIDE / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


Rendered = tuple[list[torch.Tensor], torch.Tensor | None]  # style vectors [faces, C_i] and SFE's feature or None


@dataclass(frozen=True)
class Preview:
    """The first strength seen before it is done: ``image`` is the photo at ``preview_size`` with the faces
    pasted from the generator's 256² output of the render whose full-size result becomes ``Output`` number
    ``index``."""

    index: int
    alpha: float
    image: Image.Image


@dataclass(frozen=True)
class Output:
    """One strength's result: ``index`` = position in the alphas; ``image``: the full photo; ``likeness``: per
    face (in the inversions' order), cosine of the identity model's embeddings of the original and the edited
    aligned face, or None when the bundle has no identity model."""

    index: int
    alpha: float
    image: Image.Image
    likeness: tuple[float, ...] | None = None


def _faces_batch(per_face: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-face style lists (each layer ``[1, C]``) → one list of ``[faces, C]`` layers."""
    return [torch.cat(layer) for layer in zip(*per_face, strict=True)]


def _sfe_inversions(inversions: list[Inversion], mode: str, sfe) -> list[Inversion] | None:
    """The inversions when they are SFE's (all of them: one render injects one feature per face), else None;
    ``invalid_parameter`` for a mix, optimize mode, or shapes this generator and SFE do not take."""
    inverters = {inv.inverter for inv in inversions}
    if inverters == {"e4e"}:
        return None
    if len(inverters) > 1:
        raise PipelineError(INVALID_PARAMETER, "the faces of one edit must come from one inversion, got "
                                               f"{sorted(inverters)}")
    if mode != "global":
        raise PipelineError(INVALID_PARAMETER, f"mode {mode} works from e4e inversions only: invert with e4e")
    if sfe is None:
        raise PipelineError(MODEL_MISSING, "the inversion is SFE's, and this bundle has no SFE model: invert again")
    from pipeline.models.sfe import FEATURE_RESOLUTION

    expected = (sfe.cfg.feature_channels, FEATURE_RESOLUTION, FEATURE_RESOLUTION)
    for inv in inversions:
        if inv.feature.shape != expected:
            raise PipelineError(INVALID_PARAMETER, f"the inversion's feature is {inv.feature.shape}, this model "
                                                   f"needs {expected}: invert the photo again")
    return inversions


def render_order(n: int) -> list[int]:
    """The middle strength first (what the app shows first), then outwards, nearer ones first, lower first."""
    middle = n // 2
    return sorted(range(n), key=lambda i: (abs(i - middle), i))


# --- helpers ---------------------------------------------------------------------------------------------------

def _record_face(metrics: dict | None, index: int, seconds: dict[str, float]) -> None:
    """Add a face's stage seconds to the totals and to its entry in ``metrics["faces"]`` (made if absent)."""
    if metrics is None:
        return
    faces = metrics.setdefault("faces", [])
    entry = next((f for f in faces if f.get("index") == index), None)
    if entry is None:
        entry = {"index": index}
        faces.append(entry)
    for key, value in seconds.items():
        metrics[key] = metrics.get(key, 0.0) + value
        entry[key] = entry.get(key, 0.0) + value


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
