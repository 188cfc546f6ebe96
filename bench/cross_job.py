"""A GPU worker running several edit jobs at once: edits per second and job latency when their strengths render
together (issue #25 §2: ≥ 300 edits/s on an H100/H200-class GPU with p99 job latency reported, ≤ 25 ms per edit at
batch 1 kept).

Each job is what the worker's job thread does with the Editor (``pipeline/edit/editor.py``) once the direction is
known: its strengths one after another, each rendered (through the shared ``RenderBatcher`` of
``pipeline/render/batching.py``, as ``EDIT_JOBS_PER_WORKER`` > 1 makes the worker do, or alone), pasted into its
photo where it was rendered (``paste_group``: on the GPU there) and encoded as the stored JPEG. ``jobs`` threads
each take the next job as soon as theirs is done (a worker with ``jobs`` job slots and a full queue), for
``rounds × jobs`` jobs after one untimed round that records the graphs. Reported per setting: edits per second
(output photos), the p50/p99 job latency (a job's first render to its last photo encoded), the p50 latency to a
job's first photo, and the mean number of faces per render.

``python -m bench --only gpu`` runs it on CUDA with the rest of the GPU group; alone (a GPU session's one command):

    python -m bench.cross_job --device cuda --report docs/BENCHMARKS.md     (its section of the report)
    python -m bench.cross_job --device cuda --json > cross_job.json
    python -m bench.cross_job --quick                      (tiny models on the CPU: checks it runs)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.machine import machine_info
from bench.models import Inverted, Models
from bench.timing import synchronize

JOBS = (1, 4, 8, 16)  # jobs in flight at once (EDIT_JOBS_PER_WORKER)
STRENGTHS = 5  # per job: the app's default alphas
ROUNDS = 4  # timed jobs per setting: rounds × jobs in flight


@dataclass(frozen=True)
class Setting:
    jobs: int
    batched: bool

    @property
    def name(self) -> str:
        return f"{self.jobs} job{'s' if self.jobs > 1 else ''} {'batched' if self.batched else 'alone'}"


def settings_for(jobs: tuple[int, ...]) -> list[Setting]:
    """Batched at each number of jobs in flight, and beside them each job rendering alone at the smallest and the
    largest (the batch-1 latency without a batcher; threads alone, without shared renders)."""
    out = [Setting(1, batched=False)] + [Setting(n, batched=True) for n in jobs]
    if max(jobs) > 1:
        out.append(Setting(max(jobs), batched=False))
    return out


def job_styles(models: Models, codes: torch.Tensor, strengths: int, seed: int) -> list[list[torch.Tensor]]:
    """One job's strengths: its own style sets, one face each (the inversion's codes plus W+ noise of ``seed``)."""
    noise = torch.randn(strengths, *codes.shape[1:], generator=torch.Generator().manual_seed(seed)) * 0.1
    with torch.no_grad():
        styles = models.generator.styles((codes.cpu().float() + noise).to(models.device))
    return [[layer[i:i + 1] for layer in styles] for i in range(strengths)]


def run_setting(models: Models, inverted: Inverted, setting: Setting, strengths: int, rounds: int,
                batch_max: int, wait_ms: float) -> dict:
    """``rounds × jobs`` jobs, ``setting.jobs`` at a time (after one untimed round): edits/s and latencies."""
    from pipeline.faces.paste_gpu import paste_group
    from pipeline.faces.photo import encode_image, load_photo
    from pipeline.render.batching import RenderBatcher

    photo = load_photo(inverted.photo)
    quads = [inverted.quad]
    pool = [job_styles(models, inverted.codes, strengths, seed) for seed in range(min(setting.jobs, 16))]
    batcher = RenderBatcher(models.renderer, batch_max, wait_ms / 1000) if setting.batched else None

    def render(styles: list[torch.Tensor]) -> torch.Tensor:
        if batcher is not None:
            return batcher.render(styles)
        with torch.no_grad():
            return models.renderer.render(styles)

    def one_job(n: int, latencies: list, firsts: list) -> None:
        start = time.perf_counter()
        with batcher.active() if batcher is not None else _nothing():
            for k, styles in enumerate(pool[n % len(pool)]):
                faces = render(styles)
                encode_image(paste_group(photo, faces, quads), "jpeg")
                if k == 0:
                    firsts.append(time.perf_counter() - start)
        latencies.append(time.perf_counter() - start)

    def run(total: int) -> tuple[float, list[float], list[float]]:
        latencies: list[float] = []
        firsts: list[float] = []
        taken = iter(range(total))
        lock = threading.Lock()
        errors: list[BaseException] = []

        def slot() -> None:
            try:
                while True:
                    with lock:
                        n = next(taken, None)
                    if n is None:
                        return
                    one_job(n, latencies, firsts)
            except BaseException as error:  # noqa: BLE001 - raised below, on the bench's thread
                errors.append(error)

        synchronize(models.device)
        start = time.perf_counter()
        threads = [threading.Thread(target=slot, name=f"job-slot-{i}") for i in range(setting.jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        synchronize(models.device)
        if errors:
            raise errors[0]
        return time.perf_counter() - start, latencies, firsts

    try:
        run(setting.jobs)  # untimed: graphs for the batch sizes this setting makes, allocator growth
        before = dataclasses.replace(batcher.stats) if batcher is not None else None
        total = rounds * setting.jobs
        seconds, latencies, firsts = run(total)
    finally:
        if batcher is not None:
            batcher.close()
    renders = batcher.stats.batches - before.batches if batcher is not None else 0
    faces = batcher.stats.rows - before.rows if batcher is not None else 0
    return {"jobs": setting.jobs, "batched": setting.batched, "strengths": strengths, "jobs_done": total,
            "seconds": seconds, "edits_per_s": total * strengths / seconds,
            "job_p50_s": _percentile(latencies, 50), "job_p99_s": _percentile(latencies, 99),
            "first_photo_p50_s": statistics.median(firsts), "per_edit_s": statistics.median(latencies) / strengths,
            "faces_per_render": faces / renders if renders else 1.0}


def batched_error(models: Models, inverted: Inverted, callers: int = 4) -> float:
    """Max relative error (max |batched − alone| / max |alone|) of each caller's faces from one shared render
    against the same faces rendered alone: 0 on a CPU (one sample at a time); on a GPU another batch size may
    pick other kernels, which must stay within the golden tolerance (``HALF_PRECISION_TOL``)."""
    from pipeline.render.batching import RenderBatcher

    requests = [job_styles(models, inverted.codes, 1, seed)[0] for seed in range(callers)]
    with torch.no_grad():
        alone = [models.renderer.render(styles) for styles in requests]
    batcher = RenderBatcher(models.renderer, callers, wait_s=10.0)  # full at `callers` faces: one render
    answers: list = [None] * callers
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, batcher.render(requests[i])))
               for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert batcher.stats.batches == 1, batcher.stats
    return max(float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
               for got, ref in zip(answers, alone, strict=True))


def bench_cross_job(models: Models, inverted: Inverted, jobs: tuple[int, ...] = JOBS, strengths: int = STRENGTHS,
                    rounds: int = ROUNDS, batch_max: int = 16, wait_ms: float = 3.0) -> dict:
    """Every setting of ``settings_for(jobs)``, with the batcher's settings (EDIT_BATCH_MAX, EDIT_BATCH_WAIT_MS),
    after the check that a shared render gives each caller its own faces (``batched_error``)."""
    out = {"batch_max": batch_max, "wait_ms": wait_ms, "strengths": strengths,
           "batched_error": batched_error(models, inverted), "settings": {}}
    for setting in settings_for(jobs):
        out["settings"][setting.name] = run_setting(models, inverted, setting, strengths, rounds, batch_max, wait_ms)
    return out


def _percentile(values: list[float], q: float) -> float:
    """Nearest rank (as ``bench.timing.Timing.percentile``)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import DEFAULT_PHOTO
    from bench.models import FULL, QUICK, build_models, centred_quad, face_photo
    from pipeline.render.config import RenderConfig

    parser = argparse.ArgumentParser(prog="python -m bench.cross_job", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny models, 1 and 2 jobs, 2 strengths, 1 round")
    parser.add_argument("--jobs", default=None, help="comma list of jobs in flight (default 1,4,8,16)")
    parser.add_argument("--strengths", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batch-max", type=int, default=16, help="EDIT_BATCH_MAX")
    parser.add_argument("--wait-ms", type=float, default=3.0, help="EDIT_BATCH_WAIT_MS")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--report", type=Path, default=None,
                        help="write the results as the report's section on jobs at once (e.g. docs/BENCHMARKS.md)")
    RenderConfig.add_arguments(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    machine = machine_info([device])
    jobs = tuple(int(j) for j in args.jobs.split(",")) if args.jobs else ((1, 2) if args.quick else JOBS)
    strengths = args.strengths or (2 if args.quick else STRENGTHS)
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    models = build_models(QUICK if args.quick else FULL, device, render=RenderConfig.from_args(args))
    photo, is_face = face_photo(DEFAULT_PHOTO, 1024)
    quad = centred_quad(1024)
    if is_face:  # the face's own quad, as the suite's other groups paste it
        from pipeline.faces.align import align_face
        from pipeline.faces.detect import find_faces
        from pipeline.faces.photo import load_photo

        image = load_photo(photo)
        quad = align_face(image, find_faces(image), 256).quad
    with torch.no_grad():
        codes = models.encoder(torch.zeros(1, 3, 256, 256, device=device)).float()
    result = bench_cross_job(models, Inverted(photo, quad, codes), jobs, strengths, rounds, args.batch_max,
                             args.wait_ms)
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["precision"] = models.renderer.cuda().precision
    for name, row in result["settings"].items():
        print(f"{name}: {row['edits_per_s']:.1f} edits/s, job p50 {row['job_p50_s'] * 1e3:.1f} ms p99 "
              f"{row['job_p99_s'] * 1e3:.1f} ms, first photo {row['first_photo_p50_s'] * 1e3:.1f} ms, "
              f"{row['per_edit_s'] * 1e3:.1f} ms/edit, {row['faces_per_render']:.1f} faces/render")
    if args.report is not None:
        from bench.report import CROSS_JOB_HEADING, cross_job_section, merge_section

        command = "python -m bench.cross_job " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        load_end = round(os.getloadavg()[0], 2)
        existing = args.report.read_text() if args.report.is_file() else ""
        lines = cross_job_section(result, machine, command, load_end)
        args.report.write_text(merge_section(existing, CROSS_JOB_HEADING, lines))
    if args.json:
        print(json.dumps({**result, "machine": machine}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
