"""The checks ``doctor`` runs on a bundle directory, in order, each one a ``Check`` (PASS, FAIL or SKIP with a
one-line reason; the decisions and their thresholds are in ``pipeline.doctor.verdicts``).

1. the manifest, each file (present, not a web page saved in its place, the manifest's size and sha256), and the
   bundle as the pipeline itself accepts it (``Bundle.load(verify=True)``);
2. each model loads with the pipeline's own loader; the encoder's codes fit the generator; the relevance file
   fits the generator and CLIP (a real text direction is computed through them); SFE (optional) fits the
   generator and renders through its injected feature;
3. a face renders from a random latent;
4. real weights only (never on the development bundle, never with ``fast``): CLIP sees a face in that render;
   inverting the sample photo gives it back; "a face" → "a smiling face" makes CLIP's smiling score rise; SFE's
   reconstruction of the sample photo is closer than e4e's.

A check whose prerequisite failed is skipped, not failed: the first failure names the file or the check.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.doctor import verdicts as v
from pipeline.doctor.verdicts import Check, Status, failed, passed, skipped
from pipeline.errors import PipelineError
from pipeline.weights.bundle import (
    HASH_COMPUTED,
    HASH_PINNED,
    HASH_VERIFIED,
    REQUIRED_ROLES,
    Bundle,
    Manifest,
    cached_sha256,
    how_to_get,
    read_manifest,
    text_instead_of_model,
)

log = logging.getLogger(__name__)

SAMPLE_PHOTO = Path(__file__).resolve().parents[1] / "samples" / "astronaut.jpg"
LOAD_ROLES = ("generator", "encoder", "clip", "relevance", "identity", "sfe")
SEMANTIC = ("clip-face", "reconstruction", "smile-edit", "reconstruction-sfe")
# what an absent optional model leaves out
OPTIONAL_USE = {"identity": "optimize mode's identity loss",
                "sfe": "the StyleFeatureEditor inversion; `python -m pipeline download --only sfe` adds it"}
RENDER_SEED = 7
TRUNCATION = 0.7   # toward the mean W, as StyleGAN2's curated samples: a typical face, not a tail sample
CROP = 256         # e4e's input and its evaluation resolution
WIRING_TEXTS = ("a face", "a smiling face")
# What a loader may raise on a file that is not what its name says, besides its own PipelineError.
LOAD_ERRORS = (PipelineError, OSError, RuntimeError, ValueError, KeyError, TypeError)

# how the manifest knows a file's hash (``ModelFile.hash``), as said after "sha256 verified"
HASH_KINDS = {HASH_VERIFIED: " (the publisher's hash)", HASH_PINNED: " (pinned at download after a load check)",
              HASH_COMPUTED: " (a file computed here)"}
NEEDS_REAL_WEIGHTS = "needs the real weights (this is the development bundle: random weights, results mean nothing)"


@dataclass(frozen=True)
class Report:
    directory: Path
    dev: bool | None   # None when the manifest could not be read
    fast: bool
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return not any(c.status is Status.FAIL for c in self.checks)

    def count(self, status: Status) -> int:
        return sum(c.status is status for c in self.checks)

    def to_dict(self) -> dict:
        return {"bundle": str(self.directory), "dev": self.dev, "fast": self.fast, "ok": self.ok,
                "exit_code": 0 if self.ok else 1, "checks": [c.to_dict() for c in self.checks]}


def diagnose(directory: str | Path, fast: bool = False, device: str | torch.device = "cpu",
             emit: Callable[[Check], None] | None = None, semantic_on_dev: bool = False) -> Report:
    """Run every check on the bundle in ``directory`` (``emit`` sees each as it finishes). ``semantic_on_dev``
    runs the semantic checks on a development bundle too: their numbers mean nothing there, but the plumbing
    runs end to end (tests use it)."""
    session = _Session(Path(directory), torch.device(device), emit)
    session.run(fast=fast, semantic_on_dev=semantic_on_dev)
    dev = session.manifest.dev if session.manifest is not None else None
    return Report(Path(directory), dev, fast, tuple(session.checks))


class _Session:
    """One diagnosis: the checks so far and what they loaded."""

    def __init__(self, directory: Path, device: torch.device, emit: Callable[[Check], None] | None):
        self.directory, self.device, self.emit = directory, device, emit
        self.checks: list[Check] = []
        self.manifest: Manifest | None = None
        self.bundle: Bundle | None = None
        self.models: dict[str, object] = {}
        self.render: torch.Tensor | None = None
        self.inversion = None  # the sample photo's, once reconstruction has inverted it

    def record(self, name: str, step: Callable[[], Check]) -> Check:
        start = time.perf_counter()
        try:
            check = step()
        except PipelineError as exc:
            check = failed(name, exc.message)
        check = check.timed(time.perf_counter() - start)
        self.checks.append(check)
        if self.emit is not None:
            self.emit(check)
        return check

    def status(self, name: str) -> Status | None:
        return next((c.status for c in self.checks if c.name == name), None)

    def run(self, fast: bool, semantic_on_dev: bool) -> None:
        if self.record("manifest", self.check_manifest).status is not Status.PASS:
            return
        for role in self.manifest.models:
            self.record(f"file:{role}", lambda role=role: self.check_file(role))
        self.record("bundle", self.check_bundle)
        for role in LOAD_ROLES:
            self.record(f"load:{role}", lambda role=role: self.check_load(role))
        self.record("wiring:encoder", self.check_encoder_wiring)
        self.record("wiring:relevance", self.check_relevance_wiring)
        self.record("wiring:sfe", self.check_sfe_wiring)
        self.record("render", self.check_render)
        blocked = [c.name for c in self.checks if c.status is Status.FAIL]
        for name in SEMANTIC:
            if fast:
                self.record(name, lambda name=name: skipped(name, "not run with --fast (files, hashes, loads and "
                                                                  "a render only)"))
            elif blocked:
                self.record(name, lambda name=name: skipped(name, f"not run: {blocked[0]} failed"))
            elif self.manifest.dev and not semantic_on_dev:
                self.record(name, lambda name=name: skipped(name, NEEDS_REAL_WEIGHTS))
        if fast or blocked or (self.manifest.dev and not semantic_on_dev):
            return
        self.record("clip-face", self.check_clip_face)
        self.models.clear()  # the Editor loads its own; one set of weights in memory at a time
        with tempfile.TemporaryDirectory(prefix="doctor-directions-") as directions:
            from pipeline.edit.editor import Editor

            editor = Editor(self.bundle, device=self.device, directions_dir=directions)
            self.record("reconstruction", lambda: self.check_reconstruction(editor))
            self.record("smile-edit", lambda: self.check_smile(editor))
            self.record("reconstruction-sfe", lambda: self.check_sfe_reconstruction(editor))

    # --- files ---------------------------------------------------------------------------------------------

    def check_manifest(self) -> Check:
        self.manifest = read_manifest(self.directory)
        missing = [role for role in REQUIRED_ROLES if role not in self.manifest.models]
        if missing:
            return failed("manifest", f"{self.directory / 'manifest.json'} has no entry for {', '.join(missing)}")
        kind = "development bundle (random weights)" if self.manifest.dev else "real weights"
        return passed("manifest", f"{len(self.manifest.models)} entries ({', '.join(self.manifest.models)}); {kind}",
                      roles=list(self.manifest.models), dev=self.manifest.dev)

    def check_file(self, role: str) -> Check:
        name, entry = f"file:{role}", self.manifest.models[role]
        path = self.directory / entry.file
        if not path.is_file():
            return failed(name, f"{entry.file} is missing from {self.directory}: {how_to_get(self.directory)}")
        size = path.stat().st_size
        with open(path, "rb") as f:
            what = text_instead_of_model(f.read(4096))
        if what is not None:
            return failed(name, f"{entry.file} is {what} ({size:,} bytes), not a model file: a login, "
                                f"captive-portal or warning page was saved in its place; download it again",
                          bytes=size)
        if entry.bytes is not None and size != entry.bytes:
            return failed(name, f"{entry.file} has {size:,} bytes, the manifest says {entry.bytes:,}: truncated or "
                                f"another file; download it again", bytes=size, expected_bytes=entry.bytes)
        if entry.sha256 is None:
            return passed(name, f"{entry.file}, {size:,} bytes (the manifest has no sha256 to check it against)",
                          bytes=size)
        # the bundle's own hash, cached by (size, mtime) so that a start does not re-hash 1.9 GB
        actual = cached_sha256(path, self.directory)
        if actual != entry.sha256.lower():
            return failed(name, f"{entry.file} has sha256 {actual[:16]}…, the manifest says {entry.sha256[:16]}…: "
                                f"corrupt or another file; download it again", bytes=size, sha256=actual)
        known = HASH_KINDS.get(entry.hash or "", "")
        return passed(name, f"{entry.file}, {size:,} bytes, sha256 verified{known}", bytes=size, sha256=actual)

    def check_bundle(self) -> Check:
        bad = [c.name for c in self.checks if c.name.startswith("file:") and c.status is Status.FAIL]
        if bad:
            return skipped("bundle", f"not run: {', '.join(bad)} failed")
        self.bundle = Bundle.load(self.directory, verify=True)
        return passed("bundle", "the pipeline accepts it (Bundle.load with sha256 verification)")

    # --- models --------------------------------------------------------------------------------------------

    def check_load(self, role: str) -> Check:
        name = f"load:{role}"
        if role not in self.manifest.models:
            return skipped(name, f"no {role} model in the bundle (optional: {OPTIONAL_USE[role]})")
        entry = self.manifest.models[role]
        if self.status(f"file:{role}") is Status.FAIL:
            return skipped(name, f"not run: file:{role} failed")
        path = self.directory / entry.file
        stats = self.manifest.models.get("relevance_stats") if role == "relevance" else None
        try:
            model = _load(role, path, self.device, self.directory / stats.file if stats else None)
        except LOAD_ERRORS as exc:
            message = exc.message if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
            return failed(name, f"{entry.file} does not load as the {role}: {message}")
        self.models[role] = model
        return passed(name, f"{entry.file}: {_describe(role, model)}")

    def check_encoder_wiring(self) -> Check:
        name = "wiring:encoder"
        g, e4e = self.models.get("generator"), self.models.get("encoder")
        if g is None or e4e is None:
            return skipped(name, "not run: the generator or the encoder did not load")
        enc = e4e.encoder
        if (enc.stylegan_size, enc.style_count, 8 * enc.width) != (g.size, g.n_latent, g.style_dim):
            return failed(name, f"the encoder is for a {enc.stylegan_size}² generator ({enc.style_count}x"
                                f"{8 * enc.width} codes), the generator is {g.size}² ({g.n_latent}x{g.style_dim}): "
                                f"they do not belong together")
        with torch.no_grad():
            codes = e4e(torch.zeros(1, 3, CROP, CROP, device=self.device))
        if not torch.isfinite(codes).all():
            return failed(name, "the encoder's codes for a grey image are not finite: corrupt encoder weights")
        return passed(name, f"encoder codes {list(codes.shape[1:])} fit the {g.size}² generator")

    def check_relevance_wiring(self) -> Check:
        from pipeline.edit.directions import style_direction, text_direction

        name = "wiring:relevance"
        g, clip, rel = (self.models.get(r) for r in ("generator", "clip", "relevance"))
        if g is None or clip is None or rel is None:
            return skipped(name, "not run: the generator, CLIP or the relevance file did not load")
        with torch.no_grad():
            dt = text_direction(clip, *WIRING_TEXTS)
            direction = style_direction(rel.fs3.to(self.device), dt.to(self.device), v.SMILE_BETA,
                                        rel.style_std.to(self.device), g.style_dims, g.style_is_torgb)
        kept = int(sum(int((layer != 0).sum()) for layer in direction.layers))
        return passed(name, f"relevance {list(rel.fs3.shape)} fits the generator's style channels and CLIP's "
                            f"{dt.shape[0]}-d space; {WIRING_TEXTS[0]!r} → {WIRING_TEXTS[1]!r} moves {kept} "
                            f"channels at beta {v.SMILE_BETA}", channels=kept)

    def check_sfe_wiring(self) -> Check:
        from pipeline.models.sfe import FEATURE_RESOLUTION, INPUT_SIZE

        name = "wiring:sfe"
        g, sfe = self.models.get("generator"), self.models.get("sfe")
        if "sfe" not in self.manifest.models:
            return skipped(name, f"no sfe model in the bundle (optional: {OPTIONAL_USE['sfe']})")
        if g is None or sfe is None:
            return skipped(name, "not run: the generator or SFE did not load")
        cfg, width = sfe.cfg, g.channels.get(FEATURE_RESOLUTION)
        if (cfg.n_styles, cfg.style_dim, cfg.feature_channels) != (g.n_latent, g.style_dim, width) \
                or g.size <= FEATURE_RESOLUTION:
            return failed(name, f"SFE predicts {cfg.n_styles}x{cfg.style_dim} codes and a {cfg.feature_channels}-"
                                f"channel {FEATURE_RESOLUTION}² feature; the {g.size}² generator needs "
                                f"{g.n_latent}x{g.style_dim} and {width} channels there: they do not belong together")
        with torch.no_grad():
            inversion = sfe.invert(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, device=self.device), g)
            image = g.synthesize(g.styles(inversion.wplus), feature=sfe.edit_feature(inversion.fused))
        if not (torch.isfinite(inversion.fused).all() and torch.isfinite(image).all()):
            return failed(name, "SFE's inversion of a grey image does not render finite: corrupt SFE weights")
        return passed(name, f"SFE's codes and {cfg.feature_channels}-channel {FEATURE_RESOLUTION}² feature fit the "
                            f"{g.size}² generator and render")

    def check_render(self) -> Check:
        g = self.models.get("generator")
        if g is None:
            return skipped("render", "not run: the generator did not load")
        with torch.no_grad():
            z = torch.randn(1, g.style_dim, generator=torch.Generator().manual_seed(RENDER_SEED)).to(self.device)
            mean_w = _mean_w(g, self.device)
            w = mean_w + TRUNCATION * (g.mapping(z) - mean_w)
            image = g(w).float()
        finite = bool(torch.isfinite(image).all())
        values = image[torch.isfinite(image)]
        inside = float((values.abs() <= v.RENDER_RANGE).float().mean()) if values.numel() else 0.0
        std = float(values.std()) if values.numel() > 1 else 0.0
        check = v.judge_render(tuple(image.shape), g.size, finite, inside, std, dev=self.manifest.dev)
        if check.status is Status.PASS:
            self.render = image
        return check

    # --- semantic (real weights) -------------------------------------------------------------------------------

    def check_clip_face(self) -> Check:
        from pipeline.models.clip_model import clip_preprocess, image_features, text_features

        clip = self.models["clip"]
        prompts = (v.FACE_PROMPT, *v.NON_FACE_PROMPTS)
        with torch.no_grad():
            image = _unit(image_features(clip, clip_preprocess(self.render.clamp(-1, 1),
                                                               clip.visual.input_resolution)))
            texts = _unit(text_features(clip, prompts))
        cosines = (image @ texts.T)[0].tolist()
        return v.judge_clip_face(dict(zip(prompts, cosines, strict=True)), float(clip.logit_scale.exp()))

    def check_reconstruction(self, editor) -> Check:
        from pipeline.faces.align import align_crop
        from pipeline.faces.photo import load_photo
        from pipeline.models.arcface import identity_similarity
        from pipeline.train.losses import LPIPS_BACKBONE, LPIPS_DIR, LPIPS_LINEAR, load_lpips

        raw = SAMPLE_PHOTO.read_bytes()
        inversion = self.inversion = editor.invert(raw)
        models = editor.models
        target = _pixels(align_crop(load_photo(raw), inversion.quad, CROP), self.device)
        with torch.no_grad():
            codes = torch.from_numpy(inversion.codes.copy())[None].to(self.device)
            rebuilt = _at_crop(models.renderer(codes))
            average = _at_crop(models.renderer(_mean_w(models.generator, self.device)))
            mse, average_mse = float(F.mse_loss(rebuilt, target)), float(F.mse_loss(average, target))
            identity = None
            if models.identity is not None:
                identity = float(identity_similarity(models.identity, rebuilt, target)[0])
            lpips = None
            lpips_dir = self.directory / LPIPS_DIR
            if (lpips_dir / LPIPS_BACKBONE).is_file() and (lpips_dir / LPIPS_LINEAR).is_file():
                lpips = float(load_lpips(lpips_dir, self.device)(rebuilt, target)[0])
        return v.judge_reconstruction(mse, average_mse, identity, lpips)

    def check_smile(self, editor) -> Check:
        from pipeline.faces.align import align_crop
        from pipeline.models.clip_model import clip_preprocess, image_features, text_features

        inversion = self.inversion
        if inversion is None:
            return skipped("smile-edit", "not run: the sample photo could not be inverted (see reconstruction)")
        photos = editor.edit(inversion, v.SMILE_NEUTRAL, v.SMILE_TARGET, list(v.SMILE_ALPHAS), beta=v.SMILE_BETA,
                             photo=SAMPLE_PHOTO.read_bytes())
        clip = editor.models.clip
        crops = torch.cat([_pixels(align_crop(photo, inversion.quad, CROP), self.device) for photo in photos])
        with torch.no_grad():
            images = _unit(image_features(clip, clip_preprocess(crops, clip.visual.input_resolution)))
            smiling, plain = _unit(text_features(clip, v.SMILE_SCORE_PROMPTS))
        scores = (images @ smiling - images @ plain).tolist()
        return v.judge_smile(list(v.SMILE_ALPHAS), scores)


    def check_sfe_reconstruction(self, editor) -> Check:
        """SFE's reconstruction of the sample photo against e4e's, on the same 256² crop and metric (SFE reads
        the crop at the generator's size, as its FFHQ training crops; e4e the 256² one)."""
        from pipeline.faces.align import align_crop
        from pipeline.faces.photo import load_photo
        from pipeline.models.sfe import inverter_input

        name = "reconstruction-sfe"
        if "sfe" not in self.manifest.models:
            return skipped(name, f"no sfe model in the bundle (optional: {OPTIONAL_USE['sfe']})")
        if self.inversion is None:
            return skipped(name, "not run: the sample photo could not be inverted (see reconstruction)")
        g = editor.models.generator
        sfe = _load("sfe", self.directory / self.manifest.models["sfe"].file, self.device)
        photo = load_photo(SAMPLE_PHOTO.read_bytes())
        quad = self.inversion.quad
        target = _pixels(align_crop(photo, quad, CROP), self.device)
        crop = _pixels(align_crop(photo, quad, g.size, transform_size=4 * g.size), self.device)
        with torch.no_grad():
            inversion = sfe.invert(inverter_input(crop), g)
            rebuilt = g.synthesize(g.styles(inversion.wplus), feature=sfe.edit_feature(inversion.fused))
            codes = torch.from_numpy(self.inversion.codes.copy())[None].to(self.device)
            sfe_mse = float(F.mse_loss(_at_crop(rebuilt), target))
            e4e_mse = float(F.mse_loss(_at_crop(g(codes)), target))
        return v.judge_sfe_reconstruction(sfe_mse, e4e_mse)


# --- helpers -------------------------------------------------------------------------------------------------------

def _load(role: str, path: Path, device: torch.device, stats: Path | None = None):
    """The loader the ``Editor`` uses for ``role`` (``stats``: the bundle's ``relevance_stats`` file, if any)."""
    if role == "generator":
        from pipeline.models.stylegan2 import load_generator

        return load_generator(path, device).eval().requires_grad_(False)
    if role == "encoder":
        from pipeline.models.e4e import load_encoder

        return load_encoder(path, device).eval().requires_grad_(False)
    if role == "clip":
        from pipeline.models.clip_model import load_clip

        return load_clip(path, device)
    if role == "relevance":
        from pipeline.edit.relevance import load_relevance

        return load_relevance(path, stats) if stats else load_relevance(path)
    if role == "sfe":
        from pipeline.models.sfe import load_sfe

        return load_sfe(path, device).requires_grad_(False)
    from pipeline.models.arcface import load_arcface

    return load_arcface(path, device)


def _describe(role: str, model) -> str:
    if role == "generator":
        return f"StyleGAN2 {model.size}², W {model.style_dim}-d, {model.n_latent} W+ rows"
    if role == "encoder":
        enc = model.encoder
        return f"e4e IR-SE-{enc.num_layers} for a {enc.stylegan_size}² generator"
    if role == "clip":
        return (f"CLIP, {model.visual.input_resolution}² images, {model.text_projection.shape[1]}-d embeddings, "
                f"logit scale {float(model.logit_scale.exp()):.1f}")
    if role == "relevance":
        return f"fs3 {list(model.fs3.shape)}, {model.style_std.numel()} style std values"
    if role == "sfe":
        cfg = model.cfg
        depth = 2 * sum(blocks for _, blocks in cfg.stages) + 2
        return (f"StyleFeatureEditor: iResNet-{depth} to {cfg.n_styles}x{cfg.style_dim} codes and a "
                f"{cfg.feature_channels}-channel feature, feature editor of {cfg.editor_blocks} blocks")
    return "ArcFace IR-SE-50"


def _mean_w(g, device: torch.device) -> torch.Tensor:
    """The generator's mean W ``[1, style_dim]``: the checkpoint's ``latent_avg``, else 4096 mapped samples."""
    if g.latent_avg.numel():
        return g.latent_avg.reshape(-1, g.style_dim)[:1].to(device)
    return g.mean_latent(4096, generator=torch.Generator().manual_seed(RENDER_SEED))


def _pixels(image, device: torch.device) -> torch.Tensor:
    """A PIL RGB image → ``[1, 3, H, W]`` in [-1, 1]."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1)[None].to(device) / 127.5 - 1


def _at_crop(images: torch.Tensor) -> torch.Tensor:
    """Generator output as e4e evaluates it: clamped to [-1, 1], average-pooled to the 256² crop."""
    images = images.float().clamp(-1, 1)
    return F.adaptive_avg_pool2d(images, CROP) if images.shape[-1] != CROP else images


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)
