"""``precompute-relevance``: StyleCLIP's channel relevance matrix (fs3) and style std for a bundle's models."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "precompute-relevance", help="compute the relevance file the global directions need",
        description="For N random latents, perturb every conv style channel of the bundle's generator by its "
                    "std and measure how the CLIP image embedding moves (StyleCLIP's fs3), and record each "
                    "channel's std. Resumable: interrupted runs continue where they stopped. Writes the bundle's "
                    "relevance .npz (relevance.npz unless the manifest names another .npz) and points the "
                    "manifest at it with its sha256, unless --out names a file outside the bundle. Hours on a "
                    "GPU for the 1024 generator; the StyleCLIP files from `download` are the quick way.",
        epilog="example: python -m pipeline precompute-relevance --bundle models/official --images 200 --device cuda")
    parser.add_argument("--bundle", required=True, help="bundle directory (needs generator and clip)")
    parser.add_argument("--images", type=int, default=200, help="random latents to average over (default 200)")
    parser.add_argument("--stats", type=int, default=100_000,
                        help="random latents for the per-channel style mean/std (default 100000, as StyleCLIP)")
    parser.add_argument("--out", default=None, help="output file (default: the manifest's relevance file)")
    parser.add_argument("--chunk-channels", type=int, default=64,
                        help="style channels perturbed per generator batch (memory vs speed, default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random latents (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, parser=parser)
    return parser


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from pipeline.edit.relevance import precompute_relevance
    from pipeline.errors import MODEL_MISSING, PipelineError
    from pipeline.models.clip_model import load_clip
    from pipeline.models.stylegan2 import load_generator
    from pipeline.weights.bundle import read_manifest, set_computed_relevance

    if args.images < 1 or args.chunk_channels < 1 or args.stats < args.images:
        args.parser.error("--images and --chunk-channels must be positive, --stats at least --images")
    directory = Path(args.bundle)
    manifest = read_manifest(directory)
    paths = {role: directory / manifest.models[role].file for role in ("generator", "clip")}
    for role, path in paths.items():
        if not path.is_file():
            raise PipelineError(MODEL_MISSING, f"{path.name} not found in {directory}: run "
                                               f"`python -m pipeline download --dir {directory} --only {role}`")
    # Our file is an .npz; StyleCLIP's published fs3.npy (if the manifest names it) is left alone.
    current = manifest.models["relevance"].file
    default = directory / (current if current.endswith(".npz") else "relevance.npz")
    out = Path(args.out) if args.out else default
    generator = load_generator(paths["generator"], args.device).eval().requires_grad_(False)
    clip_model = load_clip(paths["clip"], args.device)
    precompute_relevance(generator, clip_model, out, n_images=args.images, chunk_channels=args.chunk_channels,
                         seed=args.seed, device=args.device, progress=not args.quiet, n_stats=args.stats)
    if out.resolve().parent == directory.resolve():
        entry = set_computed_relevance(directory, out.name, f"python -m pipeline precompute-relevance "
                                                            f"--images {args.images} --seed {args.seed}")
        print(f"manifest: relevance is now {entry.file}, sha256 {entry.sha256} ({entry.bytes} bytes)",
              file=sys.stderr)
    print(out)
    return 0
