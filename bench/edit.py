"""Edits: the cached global edit at full size (boundary, synthesis, paste-back), its throughput at several
alpha counts, and the real ``Editor``'s per-stage seconds on the development bundle.

The full-size edit repeats ``Editor.edit``'s global path step for step with the same pipeline functions (the
text direction comes from a warm ``TextDirectionCache``, as for any repeated prompt; the inversion is given),
because an ``Editor`` loads its models from a bundle on disk, and a full-size bundle is ~2 GB of random
weights to write and hash. The dev-bundle group runs the ``Editor`` itself.
"""

from __future__ import annotations

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
        from pipeline.directions import TextDirectionCache

        self.models, self.inverted = models, inverted
        self.cache = TextDirectionCache(None, model_id="bench")
        self.cache.get(models.clip, NEUTRAL, TARGET)
        self.stages: dict[str, list[float]] = defaultdict(list)

    def __call__(self, alphas: Sequence[float]) -> list[Image.Image]:
        from pipeline.directions import apply, style_direction
        from pipeline.paste import paste_back
        from pipeline.photo import load_photo

        m, g, device = self.models, self.models.generator, self.models.device
        t0 = time.perf_counter()
        with torch.no_grad():
            dt = self.cache.get(m.clip, NEUTRAL, TARGET).to(device)
            direction = style_direction(m.fs3, dt, BETA, m.style_std, g.style_dims, g.style_is_torgb)
            synchronize(device)
            t1 = time.perf_counter()
            styles = g.styles(self.inverted.codes.to(device, m.dtype))
            faces = g.synthesize(apply(styles, direction, alphas))
            pixels = ((faces.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()  # the copy to the host waits for the GPU
        t2 = time.perf_counter()
        photo = load_photo(self.inverted.photo)
        out = [paste_back(photo, Image.fromarray(face), self.inverted.quad) for face in pixels]
        t3 = time.perf_counter()
        for stage, seconds in (("direction", t1 - t0), ("synthesize", t2 - t1), ("paste", t3 - t2)):
            self.stages[f"{stage}_{len(alphas)}"].append(seconds)
        return out


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
    from pipeline.dev_bundle import make_dev_bundle

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
