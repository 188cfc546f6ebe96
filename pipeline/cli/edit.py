"""``edit PHOTO``: the whole pipeline on one photo, results written next to ``--out``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}

EPILOG = """\
alpha is the edit strength along the text direction (negative: the other way; 0: the unedited inversion);
beta the disentanglement threshold (higher: fewer style channels change, a more targeted edit; 0.08-0.2 is
typical). With several --alpha, OUT gets a suffix per alpha: --out smile.jpg --alpha -2 --alpha 2 writes
smile_a-2.jpg and smile_a2.jpg. The output has the photo's size and orientation and no metadata (EXIF/GPS).

examples:
  python -m pipeline edit me.jpg --neutral "a face" --target "a smiling face" --alpha 3 --out smile.jpg
  python -m pipeline edit me.jpg --neutral "face with hair" --target "face with grey hair" --alpha 4 \\
      --beta 0.1 --out grey.png --bundle models/official
  python -m pipeline edit me.jpg --neutral "a face" --target "a face with glasses" --mode optimize \\
      --steps 100 --alpha 0.5 --alpha 1 --out glasses.webp"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "edit", help="edit the face in a photo with a text prompt",
        description="Find the face in PHOTO, invert it into StyleGAN2's latent space (e4e), move it from the "
                    "NEUTRAL text towards the TARGET text (StyleCLIP global direction, or latent optimization "
                    "with --mode optimize) and paste the edited face back into the full photo.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photo", help="input photo (JPEG, PNG, WebP or HEIC; EXIF orientation is honoured)")
    parser.add_argument("--neutral", required=True, help='what the face is now, e.g. "a face"')
    parser.add_argument("--target", required=True, help='what it should become, e.g. "a smiling face"')
    parser.add_argument("--alpha", type=float, action="append", metavar="A",
                        help="edit strength, repeatable (default: 3 for global, 1 for optimize)")
    parser.add_argument("--beta", type=float, default=0.15, help="disentanglement threshold in (0, 1) (default 0.15)")
    parser.add_argument("--mode", choices=("global", "optimize"), default="global",
                        help="global direction (fast, default) or latent optimization (slow, more literal)")
    parser.add_argument("--steps", type=int, default=None, help="optimization steps for --mode optimize (default 100)")
    parser.add_argument("--bundle", default=None,
                        help="model bundle directory (default: $MODEL_DIR, models/official, else the dev bundle models/dev)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
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


def run(args: argparse.Namespace) -> int:
    fmt = FORMATS.get(Path(args.out).suffix.lower())
    if fmt is None:
        args.parser.error(f"--out must end in one of {', '.join(FORMATS)}, got {args.out!r}")
    alphas = args.alpha or [1.0 if args.mode == "optimize" else 3.0]
    if len(set(alphas)) != len(alphas):
        args.parser.error("--alpha values must be distinct (each names an output file)")

    from pipeline.cli.bundles import resolve_bundle
    from pipeline.cli.progress import ProgressBar
    from pipeline.editor import Editor, validate_edit
    from pipeline.photo import encode_image

    validate_edit(args.neutral, args.target, alphas, args.beta, args.mode, args.steps)  # before any model loads
    editor = Editor(resolve_bundle(args.bundle), device=args.device)
    metrics: dict[str, float] = {}
    with ProgressBar(enabled=not args.quiet) as bar:
        inversion = editor.invert(args.photo, progress=bar, metrics=metrics)
        images = editor.edit(inversion, args.neutral, args.target, alphas, beta=args.beta, mode=args.mode,
                             progress=bar, metrics=metrics, steps=args.steps)
    if inversion.note:
        print(f"note: {inversion.note}", file=sys.stderr)
    for path, image in zip(output_paths(args.out, alphas), images, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_image(image, fmt))
        print(path)
    timing = "  ".join(f"{k.removesuffix('_seconds')} {v:.2f}s" for k, v in metrics.items())
    print(f"timing: {timing}", file=sys.stderr)
    if editor.is_dev:
        print("WARNING: made with the development bundle (random weights): the edit is meaningless.",
              file=sys.stderr)
    return 0
