"""``edit PHOTO``: the whole pipeline on one photo, results written next to ``--out``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.edit.inverters import INVERSIONS
from pipeline.render.config import RenderConfig

FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}

EPILOG = """\
alpha is the edit strength along the text direction (negative: the other way; 0: the unedited inversion);
beta the disentanglement threshold (higher: fewer style channels change, a more targeted edit; 0.08-0.2 is
typical). With several --alpha, OUT gets a suffix per alpha: --out smile.jpg --alpha -2 --alpha 2 writes
smile_a-2.jpg and smile_a2.jpg. The output has the photo's size and orientation and no metadata (EXIF/GPS).

examples:
  python -m pipeline edit me.jpg --neutral "a face" --target "a smiling face" --alpha 3 --out smile.jpg
  python -m pipeline edit me.jpg --neutral "a face" --target "a smiling face" --alpha 3 --inversion sfe \
      --out smile-likeness.jpg
  python -m pipeline edit me.jpg --neutral "face with hair" --target "face with grey hair" --alpha 4 \\
      --beta 0.1 --out grey.png --bundle models/official
  python -m pipeline edit me.jpg --neutral "a face" --target "a face with glasses" --mode optimize \\
      --steps 100 --alpha 0.5 --alpha 1 --out glasses.webp
  python -m pipeline edit group.jpg --change "a face" "a smiling face" 1 \\
      --change "a face with hair" "a face with blue hair" 0.5 --faces all --alpha 2 --out party.jpg

--change NEUTRAL TARGET WEIGHT (repeatable) combines several changes: their directions are added, each times
its weight, and --alpha scales the sum. --faces picks the faces edited: largest (default), all, or indices
as listed by the detection (largest first), e.g. 0,2."""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "edit", help="edit the face in a photo with a text prompt",
        description="Find the face in PHOTO, invert it into StyleGAN2's latent space (e4e), move it from the "
                    "NEUTRAL text towards the TARGET text (StyleCLIP global direction, or latent optimization "
                    "with --mode optimize) and paste the edited face back into the full photo.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photo", help="input photo (JPEG, PNG, WebP or HEIC; EXIF orientation is honoured)")
    parser.add_argument("--neutral", help='what the face is now, e.g. "a face" (with --target: one change)')
    parser.add_argument("--target", help='what it should become, e.g. "a smiling face"')
    parser.add_argument("--change", nargs=3, action="append", metavar=("NEUTRAL", "TARGET", "WEIGHT"),
                        help="one change with its weight, repeatable (instead of --neutral/--target)")
    parser.add_argument("--faces", default="largest", type=parse_faces, metavar="largest|all|I,J",
                        help="which faces to edit: largest (default), all, or indices such as 0,2")
    parser.add_argument("--alpha", type=float, action="append", metavar="A",
                        help="edit strength, repeatable (default: 3 for global, 1 for optimize)")
    parser.add_argument("--beta", type=float, default=0.15, help="disentanglement threshold in (0, 1) (default 0.15)")
    parser.add_argument("--mode", choices=("global", "optimize"), default="global",
                        help="global direction (fast, default) or latent optimization (slow, more literal)")
    parser.add_argument("--steps", type=int, default=None, help="optimization steps for --mode optimize (default 100)")
    parser.add_argument("--inversion", choices=INVERSIONS, default=INVERSIONS[0],
                        help="how the face is inverted: e4e (default) or sfe (StyleFeatureEditor: keeps the "
                             "likeness and details, slower; needs the bundle's sfe model; --mode global only)")
    parser.add_argument("--bundle", default=None,
                        help="model bundle directory (default: $MODEL_DIR, models/official, else the dev bundle models/dev)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    RenderConfig.add_arguments(parser)
    parser.add_argument("--out", required=True, help="output file; its extension picks the format (.png .jpg .webp)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, parser=parser)
    return parser


def output_paths(out: str, alphas: list[float]) -> list[Path]:
    """``OUT`` for one alpha, ``OUT`` with ``_a{alpha}`` before the extension for several."""
    path = Path(out)
    if len(alphas) == 1:
        return [path]
    return [path.with_name(f"{path.stem}_a{alpha:g}{path.suffix}") for alpha in alphas]


def parse_faces(value: str) -> str | list[int]:
    """``largest``, ``all`` or a comma-separated list of distinct face indices."""
    if value in ("largest", "all"):
        return value
    try:
        indices = [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected largest, all or indices such as 0,2; got {value!r}") from None
    if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise argparse.ArgumentTypeError(f"face indices must be distinct and >= 0, got {value!r}")
    return indices


def changes_of(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """The changes asked for: --change entries, or the one --neutral/--target pair (weight 1)."""
    if args.change and (args.neutral or args.target):
        args.parser.error("give either --neutral/--target or --change, not both")
    if args.change:
        changes = []
        for neutral, target, weight in args.change:
            try:
                changes.append((neutral, target, float(weight)))
            except ValueError:
                args.parser.error(f"--change WEIGHT must be a number, got {weight!r}")
        return changes
    if not (args.neutral and args.target):
        args.parser.error("give --neutral and --target, or at least one --change NEUTRAL TARGET WEIGHT")
    return [(args.neutral, args.target, 1.0)]


def run(args: argparse.Namespace) -> int:
    fmt = FORMATS.get(Path(args.out).suffix.lower())
    if fmt is None:
        args.parser.error(f"--out must end in one of {', '.join(FORMATS)}, got {args.out!r}")
    alphas = args.alpha or [1.0 if args.mode == "optimize" else 3.0]
    if len(set(alphas)) != len(alphas):
        args.parser.error("--alpha values must be distinct (each names an output file)")

    changes = changes_of(args)

    from pipeline.cli.bundles import resolve_bundle
    from pipeline.cli.progress import ProgressBar
    from pipeline.edit.editor import Change, Editor
    from pipeline.edit.params import validate_render
    from pipeline.errors import INVALID_PARAMETER, PipelineError
    from pipeline.faces.photo import encode_image

    changes = [Change(n, t, w) for n, t, w in changes]
    validate_render(changes, alphas, args.beta, args.mode, args.steps)  # before any model loads
    editor = Editor(resolve_bundle(args.bundle), device=args.device, render=RenderConfig.from_args(args))
    metrics: dict = {}
    paths = output_paths(args.out, alphas)
    with ProgressBar(enabled=not args.quiet) as bar:
        found = editor.detect(args.photo)
        if args.faces == "largest" or not found:   # none found: invert says no_face
            chosen = [0]
        elif args.faces == "all":
            chosen = [face.index for face in found]
        else:
            chosen = args.faces
            if max(chosen) >= len(found):
                raise PipelineError(INVALID_PARAMETER, f"face {max(chosen)} is out of range: the photo has "
                                                       f"{len(found)} faces (valid: 0-{len(found) - 1})")
        inversions = [editor.invert(args.photo, face=i, progress=bar, metrics=metrics, inversion=args.inversion)
                      for i in chosen]

        def write(output) -> None:
            path = paths[output.index]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_image(output.image, fmt))

        outputs = editor.render(args.photo, inversions, changes, alphas, beta=args.beta, mode=args.mode,
                                steps=args.steps, progress=bar, metrics=metrics, on_output=write)
    print(f"faces: {len(found)} found, edited {', '.join(str(i) for i in chosen)}", file=sys.stderr)
    for path, output in zip(paths, outputs, strict=True):
        print(path)
        if output.likeness is not None:
            print(f"likeness {path.name}: {' '.join(f'{v:.3f}' for v in output.likeness)}", file=sys.stderr)
    timing = "  ".join(f"{k.removesuffix('_seconds')} {v:.2f}s" for k, v in metrics.items() if k != "faces")
    print(f"timing: {timing}", file=sys.stderr)
    if editor.is_dev:
        print("WARNING: made with the development bundle (random weights): the edit is meaningless.",
              file=sys.stderr)
    return 0
