"""Fine-tune the e4e encoder on a folder of faces: frozen groups, the e4e losses, resumable checkpoints, DDP.

One optimizer step = ``accum`` micro-batches of ``batch`` faces on each of ``world`` processes (torchrun), so a
small GPU reaches a useful effective batch. What makes small-batch runs dependable here:

* BatchNorm layers always use their pretrained statistics (the encoder stays in eval mode): batch statistics
  of 1-4 faces are noise, and frozen layers must not drift through their running buffers either.
* Only the trainable groups have ``requires_grad`` and only they are in the optimizer (and in DDP's buckets).
* Mixed precision (``torch.autocast``) on CUDA only, fp16 with a ``GradScaler`` (bf16 where supported, which
  needs none); any non-finite gradient skips the step instead of poisoning Adam's moments.
* ``latest.pt`` (weights, optimizer, scaler, RNG states, step and the data position) is replaced atomically
  at every save; rerunning the same command after a kill continues from it, on the same data order.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.errors import INVALID_PARAMETER, PipelineError
from pipeline.train import runs
from pipeline.train.config import FREEZE_PRESETS, GROUPS, FinetuneConfig  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 20  # consecutive non-finite steps before giving up
# Changing these on resume would make the checkpoint a different experiment.
RESUME_FIXED = ("data", "bundle", "freeze", "seed", "size", "val_split", "align")


# --- freezing ------------------------------------------------------------------------------------------------

def group_of(name: str) -> str:
    """The freeze group of an encoder parameter or buffer name."""
    head = name.split(".")[0]
    group = "latlayers" if head.startswith("latlayer") else head
    if group not in GROUPS:
        raise ValueError(f"encoder parameter {name!r} belongs to no freeze group")
    return group


def frozen_groups(spec: str) -> tuple[str, ...]:
    """``--freeze``: a preset (``all-but-styles``, ``backbone``, ``none``) or comma-separated group names."""
    if spec in FREEZE_PRESETS:
        return FREEZE_PRESETS[spec]
    groups = tuple(g.strip() for g in spec.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or set(groups) == set(GROUPS):
        raise PipelineError(INVALID_PARAMETER, f"--freeze must be one of {', '.join(FREEZE_PRESETS)} or groups "
                                               f"from {', '.join(GROUPS)} leaving one trainable, got {spec!r}")
    return groups


def apply_freeze(encoder: torch.nn.Module, frozen: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` by group; returns the trainable parameters (what the optimizer may hold)."""
    trainable = []
    for name, p in encoder.named_parameters():
        p.requires_grad_(group_of(name) not in frozen)
        if p.requires_grad:
            trainable.append(p)
    return trainable


# --- the run ---------------------------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def setup_distributed(device: torch.device) -> Dist:
    """torchrun's environment → a process group (nccl on CUDA, gloo on CPU); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    return Dist(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(config: FinetuneConfig, dist_local_rank: int) -> torch.device:
    if config.device:
        device = torch.device(config.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist_local_rank)
    return device


def finetune(config: FinetuneConfig) -> dict:
    """Train (or resume) the run in ``config.out``; returns the final validation metrics."""
    device = pick_device(config, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = setup_distributed(device)
    try:
        return Trainer(config, device, dist).run()
    finally:
        if dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def start_run_config(config: FinetuneConfig, out: Path, resumed: dict | None, data_summary: dict,
                     world: int) -> dict:
    """The ``config.json`` record: a new run id, or the resumed run's (after checking nothing essential moved)."""
    options = asdict(config)
    old = runs.read_json(out / runs.CONFIG)
    if resumed is not None and old:
        record = {**old, "options": options,
                  "resumes": old.get("resumes", []) + [{"step": resumed["step"], "at": _now(), "world": world}]}
    else:
        record = {"run_id": f"{out.resolve().name}-{uuid.uuid4().hex[:6]}", "created_at": _now(),
                  "options": options, "world_size": world, "data": data_summary,
                  "effective_batch": config.batch * config.accum * world}
    return record


def check_resumable(config: FinetuneConfig, out: Path) -> None:
    """Refuse to resume a run in ``out`` that was started with other experiment-defining options."""
    old = runs.read_json(out / runs.CONFIG).get("options", {})
    changed = [k for k in RESUME_FIXED if k in old and old[k] != asdict(config)[k]]
    if changed:
        raise PipelineError(INVALID_PARAMETER, f"{out} holds a run with different {', '.join(changed)}: "
                                               f"resume with the same options or use another --out")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- checkpoints ---------------------------------------------------------------------------------------------

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    """``random.setstate`` wants tuples; a checkpoint round trip may hand back lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def autocast_for(device: torch.device, enabled: bool):
    """(context, dtype or None): autocast on CUDA only; bf16 where the card has it, else fp16."""
    if not enabled or device.type != "cuda":
        return nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


# --- the loop ------------------------------------------------------------------------------------------------

class Trainer:
    """One process of a run: builds data and models, resumes, trains, validates and saves (rank 0 writes)."""

    def __init__(self, config: FinetuneConfig, device: torch.device, dist: Dist):
        self.c, self.device, self.dist = config, device, dist
        self.out = Path(config.out)

    def _check(self) -> None:
        c = self.c
        if c.size < 64 or c.size & (c.size - 1):
            raise PipelineError(INVALID_PARAMETER, f"--size must be a power of two >= 64, got {c.size}")
        for name in ("iters", "batch", "accum", "val_every", "save_every"):
            if getattr(c, name) < 1:
                raise PipelineError(INVALID_PARAMETER, f"--{name.replace('_', '-')} must be >= 1")
        if not c.lr > 0:
            raise PipelineError(INVALID_PARAMETER, f"--lr must be > 0, got {c.lr}")
        if c.lpips not in ("auto", "off"):
            raise PipelineError(INVALID_PARAMETER, f"--lpips must be auto or off, got {c.lpips!r}")

    def _data(self):
        from pipeline.train import dataset as fd
        c, dist = self.c, self.dist
        root = Path(c.data)
        rels = fd.discover(root)
        train_rels, val_rels = fd.split(rels, c.val_split)
        todo = fd.needs_alignment(root, rels, c.align)
        cache = self.out / "aligned"
        fd.align_share(root, todo, cache, dist.rank, dist.world, c.progress)
        dist.barrier()
        files, skipped = fd.collect(root, rels, todo, cache)
        if skipped:
            log.warning("%d of %d images skipped (first: %s)", len(skipped), len(rels), skipped[0])
        if c.val_split > 0 and not set(val_rels) & {f.rel for f in files}:
            log.warning("no usable validation images: the run has no validation metrics (raise --val-split)")
        train_set, val_set = set(train_rels), set(val_rels)
        train = fd.FaceImages([f for f in files if f.rel in train_set], c.size)
        val = fd.FaceImages([f for f in files if f.rel in val_set][: c.val_max], c.size)
        summary = {"images": len(rels), "train": len(train), "val": len(val), "aligned_here": len(todo),
                   "skipped": skipped[:50], "skipped_count": len(skipped)}
        return train, val, summary

    def _models(self, bundle):
        from pipeline.errors import MODEL_INVALID
        from pipeline.models.arcface import load_arcface
        from pipeline.models.e4e import load_encoder
        from pipeline.models.stylegan2 import load_generator
        from pipeline.train.losses import LPIPS_DIR, load_lpips

        generator = load_generator(bundle.path("generator"), self.device).eval().requires_grad_(False)
        e4e = load_encoder(bundle.path("encoder"), self.device)
        if (generator.n_latent, generator.style_dim) != (e4e.encoder.style_count, 8 * e4e.encoder.width):
            raise PipelineError(MODEL_INVALID, f"the encoder's codes [{e4e.encoder.style_count}, "
                                               f"{8 * e4e.encoder.width}] do not fit the generator")
        lpips = None
        if self.c.lpips != "off" and self.c.lpips_lambda > 0:
            lpips_dir = bundle.dir / LPIPS_DIR
            lpips = load_lpips(lpips_dir if lpips_dir.is_dir() else None, self.device)
        arcface = load_arcface(bundle.path("identity"), self.device) if bundle.has("identity") else None
        if arcface is None and self.dist.main:
            log.warning("no 'identity' model (model_ir_se50.pt) in the bundle: training without the identity loss")
        return generator, e4e, lpips, arcface

    def run(self) -> dict:
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        from pipeline.models.checkpoints import load_state
        from pipeline.train.dataset import StreamSampler
        from pipeline.train.losses import loss_terms, render
        from pipeline.weights.bundle import Bundle

        c, dist, device = self.c, self.dist, self.device
        self._check()
        frozen = frozen_groups(c.freeze)
        if (self.out / runs.LATEST).is_file():
            check_resumable(c, self.out)
        bundle = Bundle.load(c.bundle)
        (self.out / runs.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        train, val, summary = self._data()
        generator, e4e, lpips, arcface = self._models(bundle)
        trainable = apply_freeze(e4e.encoder, frozen)
        e4e.eval()  # BatchNorm keeps its pretrained statistics (see the module docstring)
        optimizer = torch.optim.Adam(trainable, lr=c.lr)
        autocast, amp_dtype = autocast_for(device, c.amp)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        step = samples = 0
        resumed = None
        if (self.out / runs.LATEST).is_file():
            state, resumed = runs.read_training_state(self.out / runs.LATEST)
            load_state(e4e.encoder, state, str(self.out / runs.LATEST))
            optimizer.load_state_dict(resumed["optimizer"])
            for group in optimizer.param_groups:
                group["lr"] = c.lr
            if resumed.get("scaler"):
                scaler.load_state_dict(resumed["scaler"])
            step, samples = int(resumed["step"]), int(resumed["samples"])
            if dist.main:
                log.info("resuming %s from step %d", self.out, step)
        record = start_run_config(c, self.out, resumed, summary, dist.world)
        self.run_id = record["run_id"]
        self.opts = {"encoder_type": "Encoder4Editing", "fine_tuned_run": self.run_id, "freeze": c.freeze,
                     "base_encoder": bundle.version("encoder"), "base_file": bundle.manifest.models["encoder"].file}
        if dist.main:
            runs.write_json(self.out / runs.CONFIG, record)
            if resumed is not None:
                runs.truncate_after(self.out, step)
        dist.barrier()
        if resumed is not None:
            set_rng_state(resumed["rng"])

        model = e4e
        if dist.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                e4e, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)
        per_step = c.batch * c.accum * dist.world
        sampler = StreamSampler(len(train), c.seed, c.batch, c.accum, dist.world, dist.rank, samples, c.iters - step)
        batches = iter(DataLoader(train, batch_sampler=sampler, num_workers=c.workers,
                                  pin_memory=device.type == "cuda"))
        val_loader = DataLoader(val, batch_size=c.batch, num_workers=0)
        primary = "lpips" if lpips is not None and lpips.trained else "l2"
        last_eval = (runs.read_json(self.out / runs.VAL).get("evaluations") or [{}])[-1]
        result: dict = {k: v for k, v in last_eval.items() if k != "step"}  # a finished run rerun: its last
        bar = tqdm(total=c.iters, initial=step, desc="finetune", unit="it", dynamic_ncols=True,
                   disable=not (dist.main and c.progress))
        if resumed is None and dist.main and len(val):  # the starting point every run is compared with
            runs.record_validation(self.out, 0, self._validate(e4e, generator, lpips, arcface, val_loader), primary)
        bad = 0
        while step < c.iters:
            start = time.perf_counter()
            sums: dict[str, float] = {}
            for m in range(c.accum):
                x = next(batches).to(device, non_blocking=True)
                sync = model.no_sync() if dist.world > 1 and m < c.accum - 1 else nullcontext()
                with sync:
                    with autocast:
                        codes = model(x)
                        y_hat = render(generator, codes, c.size)
                    terms = loss_terms(c, codes.float(), y_hat.float(), x, lpips, arcface)
                    scaler.scale(terms["loss"] / c.accum).backward()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / c.accum
            ok = self._optimizer_step(optimizer, scaler, trainable)
            bad = 0 if ok else bad + 1
            if bad >= MAX_BAD_STEPS:
                raise PipelineError(INVALID_PARAMETER, f"{bad} steps in a row had non-finite gradients: the run "
                                                       f"diverged; resume with a lower --lr (now {c.lr})")
            step, samples = step + 1, samples + per_step
            if dist.main:
                runs.append_metrics(self.out, {"step": step, **{k: round(v, 6) for k, v in sums.items()},
                                               "lr": c.lr, "seconds": round(time.perf_counter() - start, 3),
                                               **({} if ok else {"skipped": True})})
                bar.set_postfix(loss=f"{sums['loss']:.4f}", refresh=False)
                bar.update(1)
            last = step == c.iters
            if step % c.val_every == 0 or last:
                if dist.main and len(val):
                    result = self._validate(e4e, generator, lpips, arcface, val_loader)
                    runs.record_validation(self.out, step, result, primary)
                    bar.write(f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
            if step % c.val_every == 0 or step % c.save_every == 0 or last:
                if dist.main:
                    self._save(e4e, optimizer, scaler, step, samples)
                dist.barrier()
        bar.close()
        return result

    def _optimizer_step(self, optimizer, scaler, trainable) -> bool:
        """Clip (optionally), then step unless a gradient is non-finite; True when the step was taken."""
        scaler.unscale_(optimizer)
        if self.c.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(trainable, self.c.clip_grad)
        grads = [p.grad for p in trainable if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else False
        if finite:
            scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return finite

    @torch.no_grad()
    def _validate(self, e4e, generator, lpips, arcface, loader) -> dict[str, float]:
        """Reconstruction of the held-out faces: L2, LPIPS (or its untrained stand-in), identity similarity."""
        from pipeline.models.arcface import identity_similarity
        from pipeline.train.losses import render

        autocast, _ = autocast_for(self.device, self.c.amp)
        sums: dict[str, float] = {}
        n = 0
        for x in loader:
            x = x.to(self.device)
            with autocast:
                y_hat = render(generator, e4e(x), self.c.size)
            y_hat = y_hat.float().clamp(-1, 1)
            parts = {"l2": F.mse_loss(y_hat, x, reduction="none").mean(dim=(1, 2, 3))}
            if lpips is not None:
                parts["lpips" if lpips.trained else "lpips_untrained"] = lpips(y_hat, x)
            if arcface is not None:
                parts["id_similarity"] = identity_similarity(arcface, y_hat, x)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
            n += x.shape[0]
        return {k: round(v / n, 6) for k, v in sums.items()}

    def _save(self, e4e, optimizer, scaler, step: int, samples: int) -> None:
        opts = {**self.opts, "step": step}
        runs_dir = self.out
        runs.checkpoint_path(runs_dir, step).parent.mkdir(exist_ok=True)
        runs.save_checkpoint(runs.checkpoint_path(runs_dir, step), e4e, opts)
        training = {"step": step, "samples": samples, "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rng_state(), "run_id": self.run_id}
        runs.save_checkpoint(runs_dir / runs.LATEST, e4e, opts, training)
        best = (runs.read_json(runs_dir / runs.VAL).get("best") or {}).get("step")
        runs.prune_checkpoints(runs_dir, self.c.keep, best)
        runs.plot_curves(runs_dir)
