"""The generator on a GPU: what each precision and CUDA graphs buy at batch 1, and throughput when several jobs'
strengths render in one batch (issue #16 §2's GPU goals: ≤ 25 ms per 1024 edit at batch 1, ≥ 300 edits/s
batched).

The served renderer is ``Renderer.cuda()`` (``pipeline/render/renderer.py``): the precision it chose on
these weights, with graphs. The variants beside it are built the same way with one setting changed, and run in
alternation so they share the GPU's clocks and the host's load. A batched edit is what a worker batching across
jobs would do: one render of ``B`` style sets (each job its own inversion and strength), then each face pasted
into its job's photo where it was rendered (``pipeline.faces.paste_gpu``). Across jobs (``bench/cross_job.py``):
several jobs in flight at once, each on its own thread, their strengths rendered together through the shared
batcher as a worker with EDIT_JOBS_PER_WORKER > 1 does: edits per second, p50/p99 job latency, batch-1 latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from bench.models import Inverted, Models
from bench.timing import measure, measure_interleaved, synchronize

BATCHES = (4, 16, 64)
EDIT_BATCHES = (16, 64)


def variants(models: Models) -> dict[str, Callable[[], object]]:
    """Renderer factories: the served renderer's settings and, beside them, one setting changed at a time
    (precision, graphs). Each call builds a fresh renderer: a graph holds its memory."""
    from pipeline.render.cuda import CudaRenderer

    g = models.generator
    served = models.renderer.cuda()
    if models.device.type != "cuda":  # --quick on a CPU: no TF32, no graphs
        return {"float32 eager": lambda: CudaRenderer(g, "float32", graphs=False),
                "float16 eager": lambda: CudaRenderer(g, "float16", graphs=False),
                f"served: {served.precision}": lambda: CudaRenderer(g, served.precision, graphs=False)}
    out: dict[str, Callable[[], object]] = {
        f"{p} eager": (lambda p=p: CudaRenderer(g, p, graphs=False)) for p in ("float32", "tf32", "float16")}
    for p in ("tf32", "float16"):
        out[f"{p} graphs"] = lambda p=p: CudaRenderer(g, p, graphs=True)
    out[f"served: {served.precision} graphs"] = lambda: CudaRenderer(g, served.precision, graphs=True)
    return out


def render_variants(models: Models, codes: torch.Tensor, repeats: int, budget_s: float,
                    batch: int) -> dict[str, dict]:
    """Render seconds of each variant at batch 1 (in alternation) and at ``batch`` (images per second, one
    variant at a time, its memory released before the next)."""
    factories = variants(models)
    g = models.generator
    with torch.no_grad():
        styles = g.styles(codes.to(models.device))
    renderers = {name: make() for name, make in factories.items()}
    timings = measure_interleaved({name: (lambda r=r: r.render(styles)) for name, r in renderers.items()},
                                  repeats, budget_s, models.device)
    out = {name: {"median_s": t.median, "runs": t.n} for name, t in timings.items()}
    renderers.clear()
    many = batch_styles(models, codes, batch)
    for name, make in factories.items():
        if name.endswith("eager") and models.device.type == "cuda":
            continue
        renderer = make()
        timing = measure(lambda r=renderer: r.render(many), max(3, repeats // 4), budget_s / 2, models.device)
        out[name][f"batch_{batch}_images_per_s"] = batch / timing.median
        del renderer
        _release(models.device)
    return out


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def batch_styles(models: Models, codes: torch.Tensor, batch: int, seed: int = 1) -> list[torch.Tensor]:
    """``batch`` different style sets (as from ``batch`` jobs): the inversion's codes plus small W+ noise."""
    noise = torch.randn(batch, *codes.shape[1:], generator=torch.Generator().manual_seed(seed)) * 0.1
    with torch.no_grad():
        return models.generator.styles((codes.cpu().float() + noise).to(models.device))


def render_throughput(models: Models, codes: torch.Tensor, batches: tuple[int, ...], repeats: int,
                      budget_s: float) -> dict[int, dict]:
    """The served renderer at several batch sizes: seconds per batch and images per second."""
    renderer = models.renderer.cuda()
    out = {}
    for batch in batches:
        styles = batch_styles(models, codes, batch)
        timing = measure(lambda styles=styles: renderer.render(styles), repeats, budget_s, models.device)
        out[batch] = {"batch_s": timing.median, "images_per_s": batch / timing.median, "runs": timing.n}
    return out


def edit_throughput(models: Models, inverted: Inverted, batches: tuple[int, ...], rounds: int = 4) -> dict[int, dict]:
    """Edits per second when ``batch`` jobs' strengths render together: one render, then each job's face
    pasted into its own photo as the worker would (``paste_rendered``: on the GPU when the faces are there)."""
    from pipeline.faces.paste_gpu import paste_rendered
    from pipeline.faces.photo import load_photo

    renderer = models.renderer.cuda()
    photo = load_photo(inverted.photo)
    out = {}
    for batch in batches:
        styles = batch_styles(models, inverted.codes, batch)

        def run(n_rounds: int, styles: list[torch.Tensor] = styles) -> float:
            synchronize(models.device)
            start = time.perf_counter()
            for _ in range(n_rounds):
                faces = renderer.render(styles)
                for face in faces.split(1):  # each job its own photo (here all the same one)
                    paste_rendered(photo, face, inverted.quad)
            return time.perf_counter() - start

        run(1)  # warm-up: the graph for this batch size is recorded here
        seconds = run(rounds)
        out[batch] = {"edits_per_s": batch * rounds / seconds, "seconds": seconds, "edits": batch * rounds}
    return out


def bench_gpu(models: Models, inverted: Inverted, repeats: int, budget_s: float, quick: bool = False) -> dict:
    """All of the above; on a CPU (``--quick`` smoke tests) graphs are left out and batches kept small."""
    renderer = models.renderer.cuda()
    repeats = max(repeats, 3 if quick else 30)
    batches, edit_batches = ((2,), (2,)) if quick else (BATCHES, EDIT_BATCHES)
    from bench.cross_job import bench_cross_job

    cross_job = (bench_cross_job(models, inverted, jobs=(1, 2), strengths=2, rounds=1) if quick
                 else bench_cross_job(models, inverted))
    return {"precision": renderer.precision, "precision_errors": renderer.errors, "graphs": renderer.graphs,
            "variants": render_variants(models, inverted.codes, repeats, budget_s, batches[1] if len(batches) > 1 else batches[0]),
            "render_batches": render_throughput(models, inverted.codes, batches, repeats, budget_s),
            "edit_batches": edit_throughput(models, inverted, edit_batches, rounds=1 if quick else 4),
            "cross_job": cross_job}
