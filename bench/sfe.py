"""StyleFeatureEditor beside e4e (issue 22), at full size, in one run: the inversion and a cached edit of one
strength by each inverter, in alternation (``measure_interleaved``: both saw the same load), their ratio
against the goals, and where SFE's time goes.

The steps repeat ``Editor.invert`` (``_invert_sfe``) and ``Editor.render`` (``_sfe_faces``) with the same
pipeline functions and the service's render layer, as ``bench.edit`` does for e4e (an ``Editor`` needs a bundle
on disk). SFE is the official architecture (``SFEConfig()``: iResNet-50 backbone, 18 W+ heads, fuser and Feature
Editor of 5 residual blocks at 512×64²) with random weights by the golden fill rule, which times like the real
ones. Per edit, SFE renders e4e's unedited 64² feature once; per strength, e4e's edited 64² feature, the
Feature Editor, and the image from the injected feature (the generator from 128² up), then the paste.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch
import torch.nn.functional as F

from bench.edit import BETA
from bench.models import NEUTRAL, TARGET, Inverted, Models, fill
from bench.timing import Timing, measure_interleaved, paired_ratio, synchronize

HEADING = "## StyleFeatureEditor beside e4e"
CPU_RATIO_GOAL = 2.0  # a cached SFE edit / a cached e4e edit, per strength, on a CPU (issue 22)
GPU_EDIT_GOAL_S = 0.030  # one cached SFE edit of a 1024² face on an H100/H200-class GPU (issue 22)
ALPHA = 2.0
INVERSION_STAGES = ("backbone", "generator_feature", "generator_feature_reference", "fuser", "e4e")
EDIT_STAGES = ("direction", "e4e_feature", "edited_e4e_feature", "feature_editor", "feature_editor_module",
               "render_from_feature", "paste")


class SfeBench:
    """SFE's and e4e's inversion and cached edit on ``models`` (the generator, e4e, CLIP and relevance of the
    run), with SFE built beside them."""

    def __init__(self, models: Models, inverted: Inverted, seed: int = 0, quick: bool = False):
        from pipeline.edit.directions import TextDirectionCache
        from pipeline.faces.photo import load_photo
        from pipeline.models.sfe import FEATURE_RESOLUTION, SFE, SFEConfig

        g = models.generator
        self.resolution = FEATURE_RESOLUTION  # where SFE predicts and injects its feature
        if g.size <= self.resolution:
            raise ValueError(f"SFE injects its feature at {self.resolution}²: the generator must be larger, "
                             f"got {g.size}²")
        cfg = SFEConfig(n_styles=g.n_latent, style_dim=g.style_dim, feature_channels=g.channels[self.resolution])
        if quick:  # the development bundle's widths: a smoke test of the steps, not a measurement
            cfg = SFEConfig(stem=8, stages=((8, 1), (8, 1), (16, 1), (16, 1)), n_styles=g.n_latent,
                            style_dim=g.style_dim, feature_channels=g.channels[self.resolution], fuser_blocks=1,
                            editor_blocks=1)
        from pipeline.render.fuser import FuserRenderer

        self.models, self.inverted = models, inverted
        self.sfe = fill(SFE(cfg), seed + 7).to(models.device)
        nnpack = models.renderer.config.nnpack  # the fuser and the Feature Editor as the Editor runs them
        self.fuser = FuserRenderer(self.sfe.inverter.fuser, nnpack)
        self.feature_editor = FuserRenderer(self.sfe.feature_editor, nnpack)
        self.photo = load_photo(inverted.photo)
        self.cache = TextDirectionCache(None, model_id="bench")
        self.cache.get(models.clip, NEUTRAL, TARGET)
        device = models.device
        with torch.no_grad():
            # the aligned crop: e4e's at 256², SFE's at the generator's size (content does not change the time)
            self.x256 = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed)).to(device) * 2 - 1
            self.x_full = F.interpolate(self.x256, size=(g.size, g.size), mode="bilinear", align_corners=False)
            inverted_sfe = self.sfe_invert()
        self.sfe_codes, self.e4e_codes, self.fused = inverted_sfe

    # --- the inversions ------------------------------------------------------------------------------------

    def e4e_invert(self) -> torch.Tensor:
        """``Editor.invert`` with e4e: the encoder on the 256² crop."""
        with torch.no_grad():
            return self.models.encoder(self.x256).float()

    def sfe_invert(self, feature=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``Editor._invert_sfe``: the crop at the generator's size resized to 256², SFE's inversion (its 64²
        feature through the render layer, or ``feature``), and e4e's codes of the same input."""
        from pipeline.models.sfe import inverter_input

        m = self.models
        with torch.no_grad():
            x = inverter_input(self.x_full)
            inversion = self.sfe.invert(x, m.generator, feature=feature or m.renderer.feature, fuse=self.fuser.merge)
            return inversion.wplus.float(), m.encoder(x).float(), inversion.fused

    # --- the cached edits ----------------------------------------------------------------------------------

    def _direction(self) -> list[torch.Tensor]:
        from pipeline.edit.directions import style_direction

        m, g = self.models, self.models.generator
        dt = self.cache.get(m.clip, NEUTRAL, TARGET).to(m.device)
        return style_direction(m.fs3, dt, BETA, m.style_std, g.style_dims, g.style_is_torgb)

    def e4e_edit(self, stages: dict | None = None):
        """One strength from e4e's codes: direction, styles + alpha·direction, render, paste."""
        from pipeline.edit.directions import apply
        from pipeline.faces.paste_gpu import paste_rendered

        m, g = self.models, self.models.generator
        with torch.no_grad():
            direction = self._direction()
            faces = m.renderer.render(apply(g.styles(self.inverted.codes.to(m.device)), direction, [ALPHA]))
        return paste_rendered(self.photo, faces, self.inverted.quad)

    def sfe_edit(self, stages: dict[str, float] | None = None):
        """One strength from SFE's inversion, as ``Editor._sfe_faces``: e4e's unedited 64² feature (once per edit),
        then e4e's edited one, the Feature Editor on the difference, the image from the edited feature, the paste.
        ``stages``: seconds per step are added to it (each step synchronized: for the breakdown only)."""
        from pipeline.edit.directions import apply
        from pipeline.faces.paste_gpu import paste_rendered

        m, g, renderer, r = self.models, self.models.generator, self.models.renderer, self.resolution
        clock = _Clock(m.device, stages)
        with torch.no_grad():
            direction = self._direction()
            styles, e4e_styles = g.styles(self.sfe_codes), g.styles(self.e4e_codes)
            clock("direction")
            e4e_feature, _ = renderer.feature(e4e_styles, r)
            clock("e4e_feature")
            delta = e4e_feature - renderer.feature(apply(e4e_styles, direction, [ALPHA]), r)[0]
            clock("edited_e4e_feature")
            feature = self.sfe.edit_feature(self.fused, delta, edit=self.feature_editor.merge)
            clock("feature_editor")
            if stages is not None:  # the module itself, for the breakdown (not served)
                self.sfe.edit_feature(self.fused, delta)
                clock("feature_editor_module")
            faces = renderer.render(apply(styles, direction, [ALPHA]), feature)
            clock("render_from_feature")
        out = paste_rendered(self.photo, faces, self.inverted.quad)
        clock("paste")
        return out

    def inversion_stages(self, feature_reference) -> dict[str, float]:
        """One SFE inversion step by step (synchronized), plus the 64² feature by the generator's own path
        (``feature_reference``: what ``SFE.invert`` used before it went through the render layer)."""
        from pipeline.models.sfe import inverter_input

        m, g, r = self.models, self.models.generator, self.resolution
        stages: dict[str, float] = {}
        clock = _Clock(m.device, stages)
        with torch.no_grad():
            x = inverter_input(self.x_full)
            codes, predicted = self.sfe.inverter.fs_backbone(x)
            clock("backbone")
            styles = g.styles(codes + g.latent_avg)
            own, _ = m.renderer.feature(styles, r)
            clock("generator_feature")
            feature_reference(styles, r)
            clock("generator_feature_reference")
            self.fuser.merge(predicted, own)
            clock("fuser")
            m.encoder(x)
            clock("e4e")
        return stages


class _Clock:
    """Adds the seconds since the last call to ``stages[name]`` (synchronizing the device); a no-op without
    ``stages``."""

    def __init__(self, device: torch.device, stages: dict[str, float] | None):
        import time

        self.device, self.stages, self.time = device, stages, time.perf_counter
        self.last = self.time() if stages is not None else 0.0

    def __call__(self, name: str) -> None:
        if self.stages is None:
            return
        synchronize(self.device)
        now = self.time()
        self.stages[name] = self.stages.get(name, 0.0) + now - self.last
        self.last = now


def _median_stages(run, names: tuple[str, ...], repeats: int) -> dict[str, float]:
    runs = [run() for _ in range(max(1, repeats))]
    return {name: statistics.median(r.get(name, 0.0) for r in runs) for name in names}


def bench_sfe(models: Models, inverted: Inverted, repeats: int, budget_s: float, quick: bool = False) -> dict:
    """Inversion and a cached edit of one strength by e4e and by SFE, in alternation; their paired ratios;
    SFE's stages (medians of ``min(repeats, 3)`` synchronized runs)."""
    bench = SfeBench(models, inverted, quick=quick)
    g = models.generator

    def reference_feature(styles, resolution):
        return g.feature(styles, resolution)

    inversion = measure_interleaved({"e4e": bench.e4e_invert, "sfe": bench.sfe_invert}, repeats, budget_s,
                                    models.device)
    edit = measure_interleaved({"e4e": bench.e4e_edit, "sfe": bench.sfe_edit}, repeats, budget_s, models.device)
    few = min(repeats, 3)
    out: dict = {
        "sfe_invert_e4e_s": inversion["e4e"], "sfe_invert_s": inversion["sfe"],
        "sfe_invert_over_e4e": paired_ratio(inversion["sfe"], inversion["e4e"]),
        "sfe_edit_e4e_s": edit["e4e"], "sfe_edit_s": edit["sfe"],
        "sfe_edit_over_e4e": paired_ratio(edit["sfe"], edit["e4e"]),
        "sfe_inversion_stages": _median_stages(lambda: bench.inversion_stages(reference_feature), INVERSION_STAGES,
                                               few),
        "sfe_edit_stages": _median_stages(lambda: _stages_of(bench.sfe_edit), EDIT_STAGES, few),
        "sfe_generator_impl": g.impl,
        "sfe_feature_bytes_float16": int(np.prod(bench.fused.shape[1:])) * 2,
    }
    return out


def _stages_of(run) -> dict[str, float]:
    stages: dict[str, float] = {}
    run(stages)
    return stages


TIMINGS = ("sfe_invert_e4e_s", "sfe_invert_s", "sfe_edit_e4e_s", "sfe_edit_s")


def record_sfe(out: dict, result: dict) -> None:
    """Put ``bench_sfe``'s result into a device's ``out`` (medians and run counts, the rest as it is)."""
    for key, value in result.items():
        if isinstance(value, Timing):
            out[key] = value.median
            out["runs"][key] = value.n
        else:
            out[key] = value


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


STAGE_LABELS = {
    "backbone": "SFE backbone (iResNet-50 at 256², W+ heads, predicted 64² feature)",
    "generator_feature": "the generator's own 64² feature for SFE's W+ (render layer: the device's fast renderer)",
    "generator_feature_reference": "the same by the generator's own path (what SFE.invert used before; not served)",
    "fuser": "fuser (5 residual blocks at 512×64², render/fuser.py: Winograd, BatchNorm folded)",
    "e4e": "e4e on the same input (its W+ measures how an edit moves the 64² feature)",
    "direction": "text direction (cached) and the style vectors",
    "e4e_feature": "e4e's unedited 64² feature (once per edit, all strengths)",
    "edited_e4e_feature": "e4e's edited 64² feature (per strength)",
    "feature_editor": "Feature Editor (5 residual blocks at 512×64², per strength; render/fuser.py on a CPU)",
    "feature_editor_module": "the same by the module itself (PyTorch's convolutions; not served)",
    "render_from_feature": "the image from the edited feature (the generator from 128² up, per strength)",
    "paste": "paste-back into the photo (per strength)",
}


def sfe_markdown(devices: dict[str, dict], load: dict | None = None) -> list[str]:
    """The section: inversion and cached edit per inverter and device, the goals, where SFE's time goes."""
    measured = [d for d, dev in devices.items() if "sfe_edit_s" in dev]
    if not measured:
        return []
    lines = [HEADING, "",
             "The official SFE architecture (iResNet-50 inverter, fuser and Feature Editor, 162 M parameters, random "
             "weights by the golden fill rule) beside the run's e4e and 1024² generator, as the `Editor` runs them "
             "(`bench/sfe.py`). The inversion is the model work after alignment (SFE: the crop at 1024² resized to "
             "256², its backbone, the generator's own 64² feature, the fuser, and e4e on the same input; e4e: the "
             "encoder on the 256² crop). A cached edit is one strength from a cached inversion: the text direction "
             "(cached), the render and the paste into the 512² photo (SFE: e4e's unedited and edited 64² features, "
             "the Feature Editor, the image from the edited feature). e4e and SFE alternate run by run, so "
             "each ratio (the median of per-round ratios) compares runs that saw the same load.", "",
             "| device | e4e inversion | SFE inversion | SFE / e4e | cached edit, e4e | cached edit, SFE | SFE / e4e "
             "| goal | runs |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for d in measured:
        dev = devices[d]
        ratio = dev["sfe_edit_over_e4e"]
        if d.startswith("cuda"):
            goal = (f"≤ {GPU_EDIT_GOAL_S * 1e3:.0f} ms per SFE edit: "
                    f"{'met' if dev['sfe_edit_s'] <= GPU_EDIT_GOAL_S else 'not met'}")
        else:
            goal = f"≤ {CPU_RATIO_GOAL:g}×: {'met' if ratio <= CPU_RATIO_GOAL else 'not met'}"
        runs = "/".join(str(dev.get("runs", {}).get(k, "")) for k in TIMINGS)
        lines.append(f"| {d} | {_fmt(dev['sfe_invert_e4e_s'])} | {_fmt(dev['sfe_invert_s'])} | "
                     f"{dev['sfe_invert_over_e4e']:.2f} | {_fmt(dev['sfe_edit_e4e_s'])} | {_fmt(dev['sfe_edit_s'])} | "
                     f"{ratio:.2f} | {goal} | {runs} |")
    if not any(d.startswith("cuda") for d in measured):
        lines += ["", f"GPU goal (≤ {GPU_EDIT_GOAL_S * 1e3:.0f} ms per cached 1024² SFE edit on an H100/H200-class "
                      "GPU): **not measured yet** (no GPU in this run); on a GPU server `python -m bench --device cuda "
                      "--only sfe --json --out '' > gpu.json` (also part of the GPU server's suite command in "
                      "`python -m bench --help`), then `python -m bench --only sfe --merge gpu.json` here."]
    lines += ["", "Where SFE's time goes (medians of synchronized runs, seconds):", "",
              "| step | " + " | ".join(measured) + " |", "|---|" + "---:|" * len(measured)]
    for key, title in (("sfe_inversion_stages", "inversion"), ("sfe_edit_stages", "cached edit")):
        names = INVERSION_STAGES if key == "sfe_inversion_stages" else EDIT_STAGES
        for name in names:
            values = [devices[d].get(key, {}).get(name) for d in measured]
            lines.append(f"| {title}: {STAGE_LABELS[name]} | " + " | ".join(_fmt(v) for v in values) + " |")
    feature = devices[measured[0]].get("sfe_feature_bytes_float16")
    if feature:
        lines += ["", f"The inversion cache keeps the fused feature in float16: {feature / 2**20:.1f} MiB per face."]
    if load:
        busy = max(load.get("start") or 0, load.get("end") or 0) > (load.get("cores") or 1)
        lines += ["", f"1-minute load average: {load.get('start')} at the start, {load.get('end')} at the end, on "
                      f"{load.get('cores')} cores"
                      + (" (**noisy**: more work than cores): absolute times are inflated, the ratios (paired rounds) "
                         "much less." if busy else ".")]
    return lines
