"""``make-dev-bundle DIR``: tiny random-weight models in the official file formats (no internet needed)."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "make-dev-bundle", help="write the tiny random-weight development bundle",
        description="Write a model bundle of tiny random-weight models in the official file formats (StyleGAN2 "
                    "g_ema checkpoint, e4e checkpoint, CLIP TorchScript archive, relevance file) so the whole "
                    "pipeline runs end to end in seconds on a CPU. Results are meaningless noise: the bundle's "
                    'manifest says "dev": true and every user of it warns.',
        epilog="example: python -m pipeline make-dev-bundle models/dev --size 256")
    parser.add_argument("dir", help="directory to write (created; existing model files are replaced)")
    parser.add_argument("--size", type=int, default=256, help="generator resolution, a power of two (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import sys

    from pipeline.weights.dev_bundle import make_dev_bundle

    bundle = make_dev_bundle(args.dir, size=args.size, seed=args.seed)
    for role, entry in bundle.manifest.models.items():
        print(f"{role:<10} {entry.file:<32} {entry.bytes:>12,} bytes  sha256 {entry.sha256[:12]}")
    print(f"wrote the development bundle to {bundle.dir} (random weights: edits are noise)", file=sys.stderr)
    return 0
