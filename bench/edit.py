"""Edits: the cached global edit at full size (boundary, synthesis, paste-back), its throughput at several
alpha counts, and the real ``Editor``'s per-stage seconds on the development bundle.

The full-size edit repeats ``Editor.edit``'s global path step for step with the same pipeline functions (the
text direction comes from a warm ``TextDirectionCache``, as for any repeated prompt; the inversion is given),
because an ``Editor`` loads its models from a bundle on disk, and a full-size bundle is ~2 GB of random
weights to write and hash. The dev-bundle group runs the ``Editor`` itself.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from bench.models import NEUTRAL, TARGET, Inverted, Models
from bench.timing import Timing, measure, synchronize

BETA = 0.1  # low enough that random relevance rows keep channels (|fs3·dt| of random unit rows is small)


def spread_alphas(n: int) -> list[float]:
    """``n`` strengths across [-3, 3] (a slider's worth of previews)."""
    return [0.0] if n == 1 else [-3 + 6 * i / (n - 1) for i in range(n)]


class CachedEdit:
    """One cached edit: boundary from a cached text direction → styles + alpha·direction → synthesis →
    uint8 → paste into the decoded photo, one output per alpha. Stage seconds accumulate in ``stages``."""

    def __init__(self, models: Models, inverted: Inverted):
        from pipeline.edit.directions import TextDirectionCache

        self.models, self.inverted = models, inverted
        self.cache = TextDirectionCache(None, model_id="bench")
        self.cache.get(models.clip, NEUTRAL, TARGET)
        self.stages: dict[str, list[float]] = defaultdict(list)

    def _direction(self) -> list[torch.Tensor]:
        from pipeline.edit.directions import style_direction

        m, g = self.models, self.models.generator
        dt = self.cache.get(m.clip, NEUTRAL, TARGET).to(m.device)
        return style_direction(m.fs3, dt, BETA, m.style_std, g.style_dims, g.style_is_torgb)

    def _faces(self, direction: list[torch.Tensor], alphas: Sequence[float]) -> torch.Tensor:
        """The aligned faces at ``alphas``, ``[n, 3, H, W]`` on the models' device."""
        from pipeline.edit.directions import apply

        g, device = self.models.generator, self.models.device
        styles = g.styles(self.inverted.codes.to(device, self.models.dtype))
        return self.models.renderer.render(apply(styles, direction, alphas))

    def __call__(self, alphas: Sequence[float]) -> list[Image.Image]:
        from pipeline.faces.paste_gpu import paste_rendered
        from pipeline.faces.photo import load_photo

        t0 = time.perf_counter()
        with torch.no_grad():
            direction = self._direction()
            synchronize(self.models.device)
            t1 = time.perf_counter()
            faces = self._faces(direction, alphas)
            synchronize(self.models.device)
        t2 = time.perf_counter()
        out = paste_rendered(load_photo(self.inverted.photo), faces, self.inverted.quad)  # as Editor.render
        t3 = time.perf_counter()
        for stage, seconds in (("direction", t1 - t0), ("synthesize", t2 - t1), ("paste", t3 - t2)):
            self.stages[f"{stage}_{len(alphas)}"].append(seconds)
        return out

    def progressive(self, alphas: Sequence[float]) -> tuple[float, float]:
        """As ``Editor.render`` serves a job: one strength at a time in ``render_order`` (the middle one first),
        each pasted as soon as it is rendered. Seconds from the call to the first pasted photo, and to the last."""
        from pipeline.edit.editor import render_order
        from pipeline.faces.paste_gpu import paste_rendered
        from pipeline.faces.photo import load_photo

        start, first = time.perf_counter(), None
        with torch.no_grad():
            direction = self._direction()
            photo = load_photo(self.inverted.photo)
            for i in render_order(len(alphas)):
                paste_rendered(photo, self._faces(direction, [alphas[i]]), self.inverted.quad)
                if first is None:
                    first = time.perf_counter() - start
        return first, time.perf_counter() - start


def bench_first_output(models: Models, inverted: Inverted, n_alphas: int, repeats: int,
                       budget_s: float) -> dict[str, float | int]:
    """``edit_first_output_1024_s`` (call → first full-size pasted output) and ``edit_{n}_alphas_1024_s``
    (call → all of them) for a cached edit rendered strength by strength, medians after one warm-up; the ratio
    is the median of the per-run ratios (goal: first ≤ 0.3× all)."""
    edit, alphas = CachedEdit(models, inverted), spread_alphas(n_alphas)
    warm = edit.progressive(alphas)[1]
    repeats = max(1, min(repeats, int(budget_s // warm))) if warm > 0 else repeats
    runs = [edit.progressive(alphas) for _ in range(repeats)]
    return {"edit_first_output_1024_s": statistics.median(f for f, _ in runs),
            f"edit_{n_alphas}_alphas_1024_s": statistics.median(a for _, a in runs),
            "first_over_all": statistics.median(f / a for f, a in runs), "first_output_runs": len(runs)}


def bench_edits(models: Models, inverted: Inverted, alpha_counts: Sequence[int], repeats: int,
                budget_s: float) -> tuple[dict[str, Timing], dict[str, float]]:
    """``edit_cached_1024_s`` style timings per alpha count, and the median stage seconds of each.

    Only the first (smallest) batch gets a warm-up call: the larger ones reuse the warm models, and their
    first-call costs (kernel selection for new shapes) are well under 1 % of a run."""
    edit = CachedEdit(models, inverted)
    timings = {}
    for i, n in enumerate(alpha_counts):
        alphas = spread_alphas(n)
        timings[n] = measure(lambda alphas=alphas: edit(alphas), repeats, budget_s, models.device, warmup=i == 0)
        if i == 0:  # drop the warm-up's stage times
            for key in list(edit.stages):
                edit.stages[key] = edit.stages[key][1:]
    stages = {key: float(torch.tensor(v).median()) for key, v in edit.stages.items() if v}
    return timings, stages


# --- the Editor on the development bundle ------------------------------------------------------------------

def dev_bundle_dir(requested: Path | None) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """``requested`` if it holds a bundle, else ``models/dev`` (written by ``make run``), else a fresh one in a
    temporary folder (returned so the caller can remove it)."""
    from pipeline.weights.dev_bundle import make_dev_bundle

    for candidate in (requested, Path("models/dev")):
        if candidate is not None and (candidate / "manifest.json").is_file():
            return candidate, None
    tmp = tempfile.TemporaryDirectory(prefix="bench-dev-bundle-")
    make_dev_bundle(Path(tmp.name))
    return Path(tmp.name), tmp


def bench_editor_stages(bundle_dir: Path, photo: bytes, alphas: Sequence[float], repeats: int,
                        warmup: bool = True) -> dict[str, float]:
    """Median per-stage wall seconds (``Editor`` metrics) and process CPU seconds of ``invert`` and ``edit``
    with the dev bundle on CPU, over ``repeats`` runs after a warm-up (model loading is outside every stage,
    but the warm-up's text direction is computed cold, the later ones come from the cache)."""
    from pipeline import Editor

    with tempfile.TemporaryDirectory(prefix="bench-directions-") as directions:
        editor = Editor(bundle_dir, device="cpu", directions_dir=directions)
        runs: dict[str, list[float]] = defaultdict(list)
        for i in range(repeats + int(warmup)):
            metrics: dict[str, float] = {}
            cpu0 = time.process_time()
            inv = editor.invert(photo, metrics=metrics)
            cpu1 = time.process_time()
            editor.edit(inv, NEUTRAL, TARGET, alphas, beta=0.15, metrics=metrics)
            cpu2 = time.process_time()
            metrics.update(invert_cpu_seconds=cpu1 - cpu0, edit_cpu_seconds=cpu2 - cpu1)
            if i > 0 or not warmup:
                for key, value in metrics.items():
                    if isinstance(value, int | float):  # seconds; the Editor's metrics also hold per-face details
                        runs[key].append(value)
    return {key: float(torch.tensor(v).median()) for key, v in runs.items()}
