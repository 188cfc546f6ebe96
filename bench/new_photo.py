"""A new photo with a new text pair: the call → the first image a person sees, at full size.

What a person waits for after uploading a photo and typing a change nobody asked for before: the photo
aligned, e4e, the text direction computed cold (CLIP embeds the target's 79 prompts; the neutral "a face" is
embedded when the models load, as ``Editor`` does), then the first strength rendered and pasted into the photo:
first its preview (``Renderer.render_with_preview``: the generator's 256² output pasted into the photo at
``preview_size``, what the worker stores and the app shows), then the same render gone on to 1024² and pasted.
The faces were detected when the photo was uploaded (the service's ``detect_faces`` task, before the call;
timed apart as ``detect``): the edit aligns from the stored landmarks, as the worker does.
The steps repeat ``Editor.invert`` + ``Editor.render`` with the same pipeline functions (as ``bench.edit``
does for the cached edit: an ``Editor`` needs a bundle on disk). Three ways, in the same rounds as the cached
edit's first output (``CachedEdit.progressive``), so each ratio compares runs that saw the same load:

* ``serial``: one step after the other;
* ``side_by_side``: the text direction on a thread (``TextDirectionCache.prefetch``) while the photo is
  aligned and inverted, as the worker serves a job whose inversion is not cached;
* ``prepared``: the inversion done at upload (``PREPARE_INVERSIONS``: the worker inverts the largest face
  while the person writes the text), so the call computes the text direction and renders.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch

from bench.edit import BETA, CachedEdit, spread_alphas
from bench.models import NEUTRAL, TARGET, Inverted, Models
from bench.timing import synchronize

HEADING = "## A new photo's first result"
STAGES = ("align", "invert", "direction", "synthesize_256", "preview_paste", "invert_rest", "synthesize", "paste")
WAYS = ("serial", "side_by_side", "prepared")
COLUMNS = {"serial": "serial", "side_by_side": "side by side", "prepared": "inverted at upload"}
COLD = ("serial", "side_by_side")  # nothing done before the call but the detection
N_ALPHAS = 5  # the middle one renders first (render_order), as for the cached edit it is compared with


class NewPhotoEdit:
    """One new photo and one new text pair through to the first pasted strength; each call starts from a fresh
    text cache that knows only the common neutral (as a loaded ``Editor``'s does). The photo's faces are
    detected once, here (the upload's task), and timed: ``detect_s``."""

    def __init__(self, models: Models, photo: bytes):
        from pipeline.faces.detect import face_boxes, find_faces
        from pipeline.faces.photo import load_photo

        self.models, self.photo = models, photo
        start = time.perf_counter()
        image = load_photo(photo)
        self.faces = face_boxes(find_faces(image), image.size)  # with their landmarks, as the service stores them
        self.detect_s = time.perf_counter() - start
        self.prepared = self._encode(self._align(image))  # the inversion the upload's task stores (``prepared``)

    def _align(self, image, output_size: int | None = None):
        """The largest face aligned from the stored landmarks (the ``align`` stage)."""
        from pipeline.edit.editor import ENCODER_INPUT
        from pipeline.faces.align import align_face
        from pipeline.faces.detect import detected_faces

        return align_face(image, detected_faces(self.faces), output_size=output_size or ENCODER_INPUT)

    def _encode(self, alignment, first: int | None = None):
        """e4e's W+ codes of an aligned crop (the ``invert`` stage); with ``first``, staged as the worker runs it
        when a preview shows first (``Editor.invert(staged=True)``): the first rows, and a function for the rest."""
        x = torch.from_numpy(np.asarray(alignment.crop.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
        x = (x / 127.5 - 1).to(self.models.device)
        codes = self.models.encoder(x) if first is None else self.models.encoder.staged(x, first)
        synchronize(self.models.device)
        return codes


    def __call__(self, way: str) -> dict[str, float]:
        """Seconds per stage, ``first_view`` from the call to the pasted preview and ``first_output`` to the first
        pasted full-size photo (``synthesize``: the rest of the render, after the preview)."""
        from pipeline.edit.directions import COMMON_NEUTRAL, TextDirectionCache, apply, style_direction
        from pipeline.edit.editor import paste_preview, render_order
        from pipeline.faces.paste_gpu import paste_rendered
        from pipeline.faces.photo import load_photo

        m, g = self.models, self.models.generator
        cache = TextDirectionCache(None, model_id="bench")
        cache.embeddings(m.clip, [COMMON_NEUTRAL])  # not timed: the Editor embeds it when it loads
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        pending = cache.prefetch(m.clip, NEUTRAL, TARGET) if way != "serial" else None
        with torch.no_grad():
            t = time.perf_counter()
            image = load_photo(self.photo)
            rest = None
            if way == "prepared":  # the cached inversion holds the codes and the quad: nothing to align or invert
                quad = self._align(image, output_size=8).quad  # (its quad; the crop is not used)
                seconds["align"] = seconds["invert"] = 0.0
                codes = self.prepared
            else:
                alignment = self._align(image)
                quad = alignment.quad
                seconds["align"] = time.perf_counter() - t
                t = time.perf_counter()
                ready, rest = self._encode(alignment, first=m.renderer.preview_rows)
                # the rows after the preview's are placeholders until the preview is shown (never read before)
                codes = torch.cat([ready, ready[:, -1:].expand(-1, g.n_latent - ready.shape[1], -1)], dim=1)
                seconds["invert"] = time.perf_counter() - t
            t = time.perf_counter()
            dt = (pending.result() if pending is not None else cache.get(m.clip, NEUTRAL, TARGET)).to(m.device)
            direction = style_direction(m.fs3, dt, BETA, m.style_std, g.style_dims, g.style_is_torgb)
            synchronize(m.device)
            seconds["direction"] = time.perf_counter() - t  # side by side: what was left to wait for
            t = time.perf_counter()
            alphas = spread_alphas(N_ALPHAS)
            middle = render_order(N_ALPHAS)[0]
            steps = m.renderer.render_with_preview(apply(g.styles(codes.to(m.dtype)), direction, [alphas[middle]]))
            _, small = next(steps)
            synchronize(m.device)
            seconds["synthesize_256"] = time.perf_counter() - t
            t = time.perf_counter()
            paste_preview(image, small, [quad])
            seconds["preview_paste"] = time.perf_counter() - t
            seconds["first_view"] = time.perf_counter() - start
            t = time.perf_counter()
            later = None
            if rest is not None:  # the inversion's last rows, then the styles the rest of the render reads
                codes = torch.cat([ready, rest()], dim=1)
                later = apply(g.styles(codes.to(m.dtype)), direction, [alphas[middle]])
                synchronize(m.device)
            seconds["invert_rest"] = time.perf_counter() - t
            t = time.perf_counter()
            _, faces = steps.send(later)
            synchronize(m.device)
            seconds["synthesize"] = time.perf_counter() - t
            t = time.perf_counter()
            paste_rendered(image, faces, quad)
            seconds["paste"] = time.perf_counter() - t
        seconds["first_output"] = time.perf_counter() - start
        return seconds


def bench_new_photo(models: Models, photo: bytes, inverted: Inverted, repeats: int, budget_s: float) -> dict:
    """Rounds of [cached first output, the new photo each way] after one untimed round; medians per way and
    stage, and the median of the per-round ratios to the cached first output."""
    new, cached = NewPhotoEdit(models, photo), CachedEdit(models, inverted)
    alphas = spread_alphas(N_ALPHAS)

    def one_round() -> dict:
        row = {"cached": cached.progressive(alphas)[0], "load_1m": os.getloadavg()[0]}
        row.update({way: new(way) for way in WAYS})
        return row

    warm_start = time.perf_counter()
    one_round()
    per_round = time.perf_counter() - warm_start
    rounds = [one_round() for _ in range(max(1, min(repeats, int(budget_s // per_round))))]
    out: dict = {"rounds": len(rounds), "cached_first_output_s": statistics.median(r["cached"] for r in rounds),
                 "load_average_1m": [round(r["load_1m"], 2) for r in rounds], "detect_on_upload_s": new.detect_s}
    for way in WAYS:
        first = [r[way]["first_output"] for r in rounds]
        view = [r[way]["first_view"] for r in rounds]
        out[way] = {"first_output_s": statistics.median(first), "first_view_s": statistics.median(view),
                    "over_cached": statistics.median(f / r["cached"] for f, r in zip(first, rounds, strict=True)),
                    "view_over_cached": statistics.median(v / r["cached"] for v, r in zip(view, rounds, strict=True)),
                    "stages": {s: statistics.median(r[way][s] for r in rounds) for s in STAGES}}
    best = min(COLD, key=lambda w: out[w]["first_output_s"])
    served = "side_by_side"  # what the worker does when the inversion is not cached (see the section's text)
    out.update(served=served, best=best, new_photo_first_output_1024_s=out[served]["first_output_s"],
               new_photo_first_view_s=out[served]["first_view_s"],
               new_photo_prepared_first_view_s=out["prepared"]["first_view_s"],
               new_photo_prepared_first_output_1024_s=out["prepared"]["first_output_s"])
    return out


FIRST_VIEW_GOAL, FIRST_OUTPUT_GOAL = 1.5, 2.0  # × the cached edit's first output of the same run (issue 25)


def new_photo_markdown(devices: dict[str, dict]) -> list[str]:
    """The section of ``docs/BENCHMARKS.md`` for every device that ran the ``new-photo`` group."""
    measured = {d: dev["new_photo"] for d, dev in devices.items() if "new_photo" in dev}
    if not measured:
        return []
    lines = [HEADING, "",
             "A photo never seen and a text pair never asked for, from the call to the first full-size pasted "
             "photo (`new_photo_first_output_1024_s`) and to the first image the person sees "
             "(`new_photo_first_view_s`: the preview, the first strength's render stopped at 256² and pasted into "
             "the photo at most 1024 pixels wide, before the same render goes on to 1024²), against a cached edit's "
             "first output (`edit_first_output_1024_s`: inversion and direction cached) in the same rounds "
             "(`bench/new_photo.py`). The faces were detected at upload (`detect`, before the call, as the "
             "service's `detect_faces` task does): the call aligns from the stored landmarks. The neutral \"a "
             "face\" is embedded when the models load; the target's 79 prompts go through CLIP. `serial`: one step "
             "after the other; `side by side`: the text direction on a thread while the photo is aligned and "
             "inverted (what the worker does when the inversion is not cached); its `direction` row is what was left "
             "to wait for after the inversion; `inverted at upload`: the inversion prepared by the upload's task "
             "while the person writes the text (`PREPARE_INVERSIONS`, default 1: the largest face), so the call "
             "computes the text direction and renders. Ratios are medians of per-round ratios.", ""]
    for d, r in measured.items():
        lines += [f"**{d}**: {r['rounds']} round(s), 1-minute load average at each round's start "
                  f"{r['load_average_1m']} on {os.cpu_count()} cores"
                  + (" (**noisy**: more work than cores)" if max(r["load_average_1m"]) > (os.cpu_count() or 1)
                     else "") + f"; `detect` at upload: {_ms(r['detect_on_upload_s'])}.", "",
                  "| | " + " | ".join(COLUMNS[w] for w in WAYS) + " |", "|---|" + "---:|" * len(WAYS)]
        for stage in STAGES:
            lines.append(f"| {stage} | " + " | ".join(_ms(r[w]["stages"][stage]) for w in WAYS) + " |")
        lines.append("| **call → first view (the preview)** | "
                     + " | ".join(f"**{_ms(r[w]['first_view_s'])}**" for w in WAYS) + " |")
        lines.append("| × cached first output ({}) | ".format(_ms(r["cached_first_output_s"]))
                     + " | ".join(f"{r[w]['view_over_cached']:.2f}" for w in WAYS) + " |")
        lines.append("| **call → first full-size output** | "
                     + " | ".join(f"**{_ms(r[w]['first_output_s'])}**" for w in WAYS) + " |")
        lines.append("| × cached first output | " + " | ".join(f"{r[w]['over_cached']:.2f}" for w in WAYS) + " |")
        served = r[r["served"]]
        before = {s: served["stages"][s] for s in STAGES[:STAGES.index("preview_paste") + 1]}
        total = sum(before.values()) or 1.0
        lines += ["", "Where the wait before the preview goes (side by side, medians): "
                  + ", ".join(f"{s} {v / total:.0%}" for s, v in sorted(before.items(), key=lambda kv: -kv[1]))
                  + ". The preview splits the first strength's render: `synthesize_256` (up to the 256² block, "
                  "about half of the convolutions' multiply-adds) before it, `synthesize` (the 512² and 1024² "
                  "blocks) after it; and e4e: `invert` computes the W+ rows the preview reads (14 of 18), "
                  "`invert_rest` the last four heads once the preview is shown (`Editor.invert(staged=True)`, "
                  "as the worker does when it shows a preview)."]
        view, full = served["view_over_cached"], served["over_cached"]
        ready = r["prepared"]
        lines += ["", f"Goals (× the cached first output), for a photo whose inversion is not ready (side by side, "
                      f"as served): first view ≤ {FIRST_VIEW_GOAL}: {_verdict(view <= FIRST_VIEW_GOAL)} ({view:.2f}); "
                      f"first full-size ≤ {FIRST_OUTPUT_GOAL}: {_verdict(full <= FIRST_OUTPUT_GOAL)} ({full:.2f}). "
                      f"Inverted at upload (the phone app's path when the text takes longer to write than the "
                      f"inversion takes): first view {ready['view_over_cached']:.2f}, first full-size "
                      f"{ready['over_cached']:.2f}.", ""]
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"
