"""Fine-tuning runs on disk, and the registry that compares them and promotes one into a bundle.

A run directory holds::

    config.json              what was asked (options, data summary, run_id), written at the first start
    latest.pt                the newest checkpoint with training state (resume reads it)
    checkpoints/step_NNNNNN.pt   inference checkpoints (official e4e layout, no optimizer state)
    metrics.jsonl            one line per optimizer step (losses, lr, seconds)
    val.json                 validation metrics per evaluation, and which one is best
    curves.png               loss and validation curves

Every ``.pt`` file has the official ``e4e_ffhq_encode.pt`` layout (``state_dict`` with ``encoder.*``,
``latent_avg``, ``opts``), so ``pipeline.models.e4e.load_encoder`` reads any of them. ``promote`` writes the chosen
checkpoint into the bundle as a new file and then swaps the manifest's encoder entry in one atomic rename: a
worker that loads the bundle sees the old encoder or the new one, never half of either, and the pretrained file
stays on disk for rolling back.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.errors import INVALID_PARAMETER, PipelineError

CONFIG, LATEST, METRICS, VAL, CURVES = "config.json", "latest.pt", "metrics.jsonl", "val.json", "curves.png"
CHECKPOINTS = "checkpoints"


def checkpoint_path(run: Path, step: int) -> Path:
    return run / CHECKPOINTS / f"step_{step:06d}.pt"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# --- checkpoints -------------------------------------------------------------------------------------------

def save_checkpoint(path: Path, e4e, opts: dict, training: dict | None = None) -> None:
    """The official e4e layout (+ ``training`` for resuming), written to a temporary name and renamed."""
    import torch

    from pipeline.models.e4e import PREFIX

    ckpt = {"state_dict": {PREFIX + k: v.detach().cpu().contiguous() for k, v in e4e.encoder.state_dict().items()},
            "latent_avg": e4e.latent_avg.detach().cpu(), "opts": dict(opts)}
    if training is not None:
        ckpt["training"] = training
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def read_training_state(path: Path) -> tuple[dict, dict]:
    """(encoder state dict without prefix, training state) of a ``latest.pt``."""
    from pipeline.models.checkpoints import read_checkpoint
    from pipeline.models.e4e import PREFIX

    ckpt = read_checkpoint(path)
    if "training" not in ckpt:
        raise PipelineError(INVALID_PARAMETER, f"{path}: has no training state to resume from")
    return {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items()}, ckpt["training"]


def prune_checkpoints(run: Path, keep: int, best_step: int | None) -> None:
    """Keep the newest ``keep`` step checkpoints and the best one."""
    steps = sorted(int(p.stem.split("_")[1]) for p in (run / CHECKPOINTS).glob("step_*.pt"))
    for step in steps[:-keep] if keep > 0 else []:
        if step != best_step:
            checkpoint_path(run, step).unlink(missing_ok=True)


# --- metrics, validation, curves -----------------------------------------------------------------------------

def read_metrics(run: Path) -> list[dict]:
    path = run / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
    return rows


def truncate_after(run: Path, step: int) -> None:
    """Forget the metrics and evaluations of steps after ``step`` (they are recomputed after a resume)."""
    rows = [r for r in read_metrics(run) if r.get("step", 0) <= step]
    tmp = run / f".{METRICS}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, run / METRICS)
    val = read_json(run / VAL)
    if val:
        val["evaluations"] = [e for e in val.get("evaluations", []) if e["step"] <= step]
        write_json(run / VAL, with_best(val))


def append_metrics(run: Path, row: dict) -> None:
    with open(run / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def record_validation(run: Path, step: int, metrics: dict[str, float], primary: str) -> dict:
    """Add one evaluation to ``val.json``; the best one is the lowest ``primary`` (LPIPS when trained, else L2)."""
    val = read_json(run / VAL) or {"evaluations": []}
    val["primary"] = primary
    val["evaluations"] = [e for e in val["evaluations"] if e["step"] != step] + [{"step": step, **metrics}]
    val = with_best(val)
    write_json(run / VAL, val)
    return val


def with_best(val: dict) -> dict:
    """``best``: the lowest ``primary`` among the trained steps; ``baseline``: step 0, the starting encoder
    (it has no checkpoint of its own: it is the bundle's encoder)."""
    key = val.get("primary", "l2")
    scored = [e for e in val.get("evaluations", []) if key in e and e["step"] > 0]
    val["best"] = min(scored, key=lambda e: e[key]) if scored else None
    val["baseline"] = next((e for e in val.get("evaluations", []) if e["step"] == 0), None)
    return val


def plot_curves(run: Path) -> None:
    """``curves.png``: training loss terms per step (left), validation metrics per evaluation (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run)
    evals = read_json(run / VAL).get("evaluations", [])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "l2", "lpips", "lpips_untrained", "id", "delta"):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            left.plot(*zip(*points, strict=True), label=key, linewidth=1)
    left.set(title="training", xlabel="step", yscale="log")
    for key in ("l2", "lpips", "lpips_untrained", "id_similarity"):
        points = [(e["step"], e[key]) for e in evals if key in e]
        if points:
            right.plot(*zip(*points, strict=True), marker="o", label=key)
    right.set(title="validation", xlabel="step")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = run / f".{CURVES}.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, run / CURVES)


# --- the registry --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunInfo:
    """One run as ``runs list`` shows it."""

    dir: Path
    run_id: str
    step: int
    iters: int
    freeze: str
    primary: str | None
    best: dict | None
    baseline: dict | None
    last_val: dict | None

    @property
    def best_step(self) -> int | None:
        return self.best["step"] if self.best else None


def read_run(run: Path) -> RunInfo:
    config = read_json(run / CONFIG)
    if not config:
        raise PipelineError(INVALID_PARAMETER, f"{run}: not a fine-tuning run (no readable {CONFIG})")
    val = read_json(run / VAL)
    rows = read_metrics(run)
    evals = val.get("evaluations") or []
    return RunInfo(dir=run, run_id=config["run_id"], step=rows[-1]["step"] if rows else 0,
                   iters=config["options"]["iters"], freeze=config["options"]["freeze"],
                   primary=val.get("primary"), best=val.get("best"),
                   baseline=val.get("baseline"), last_val=evals[-1] if evals else None)


def find_runs(root: Path) -> list[RunInfo]:
    """Runs in ``root`` (itself, or its subdirectories one or two levels down), oldest first."""
    candidates = [root] + sorted(p for p in root.glob("*") if p.is_dir()) + sorted(root.glob("*/*/"))
    return [read_run(p) for p in candidates if (p / CONFIG).is_file()]


def resolve_checkpoint(run: Path, which: str = "best") -> tuple[Path, int]:
    """The file to promote: ``best`` (lowest validation metric, else the newest), ``latest`` or a step number."""
    info = read_run(run)
    if which == "latest" or (which == "best" and info.best_step is None):
        steps = sorted(int(p.stem.split("_")[1]) for p in (run / CHECKPOINTS).glob("step_*.pt"))
        if not steps:
            raise PipelineError(INVALID_PARAMETER, f"{run}: no checkpoints yet")
        return checkpoint_path(run, steps[-1]), steps[-1]
    step = info.best_step if which == "best" else _as_step(which)
    path = checkpoint_path(run, step)
    if not path.is_file():
        raise PipelineError(INVALID_PARAMETER, f"{run}: no checkpoint for step {step} ({path.name} missing)")
    return path, step


def _as_step(which: str) -> int:
    try:
        return int(which)
    except ValueError:
        raise PipelineError(INVALID_PARAMETER, f"--checkpoint must be best, latest or a step number, "
                                               f"got {which!r}") from None


def promote(run: Path, bundle_dir: Path, which: str = "best") -> dict:
    """Make the bundle's encoder the run's checkpoint ``which``; returns what the manifest now records.

    The checkpoint is loaded (proving it is valid for the pipeline) and rewritten without training state as
    ``encoder-<run_id>-step<N>.pt``, hashed, then the manifest entry and ``encoder_source`` are replaced
    atomically. ``Editor.encoder_version`` (the file's sha256) changes with it, and with it the inversion cache
    key; workers pick the new encoder up when they next load the bundle."""
    from pipeline.models.e4e import load_encoder, save_encoder
    from pipeline.weights.bundle import ModelFile, read_manifest, sha256_file

    info = read_run(run)
    src, step = resolve_checkpoint(run, which)
    manifest = read_manifest(bundle_dir)
    e4e = load_encoder(src)
    name = f"encoder-{info.run_id}-step{step:06d}.pt"
    tmp = bundle_dir / f".{name}.{os.getpid()}.tmp"
    save_encoder(tmp, e4e, {"encoder_type": "Encoder4Editing", "fine_tuned_run": info.run_id, "step": step})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, bundle_dir / name)
    previous = manifest.models["encoder"]
    entry = ModelFile(file=name, url=None, sha256=sha256_file(bundle_dir / name),
                      bytes=(bundle_dir / name).stat().st_size, license=previous.license,
                      source=f"fine-tuned from {previous.file} by run {info.run_id} (step {step}, {run})")
    source = {"run": info.run_id, "step": step, "checkpoint": str(src.resolve()), "val": _val_at(run, step),
              "previous_file": previous.file, "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    replace(manifest.with_entry("encoder", entry),
            extra={**manifest.extra, "encoder_source": source}).write(bundle_dir)
    return {"file": name, "sha256": entry.sha256, **source}


def _val_at(run: Path, step: int) -> dict | None:
    for e in read_json(run / VAL).get("evaluations", []):
        if e["step"] == step:
            return e
    return None
