"""``download``: fetch the official weights into a bundle directory (needs internet)."""

from __future__ import annotations

import argparse

from pipeline.bundle import ROLES


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "download", help="download the official weights (needs internet)",
        description="Download the official StyleGAN2 FFHQ generator, e4e encoder and CLIP ViT-B/32 into DIR "
                    "(writing manifest.json there if it has none). Downloads resume where they stopped, are "
                    "checked against the manifest's sha256 and only then renamed into place; a file whose "
                    "publisher gives no sha256 is pinned on first download. The relevance file is not "
                    "downloaded: compute it afterwards with `precompute-relevance`. The generator and the "
                    "encoder are licensed for non-commercial use only (see `info`).",
        epilog="example: python -m pipeline download --dir models/official --only clip")
    parser.add_argument("--dir", default=None, help="bundle directory (default: $MODEL_DIR, else models/official)")
    parser.add_argument("--only", action="append", choices=ROLES, default=[], help="fetch only this model (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.bundle import download
    from pipeline.cli.bundles import official_dir

    directory = official_dir(args.dir)
    bundle = download(directory, progress=not args.quiet, only=tuple(args.only))
    if bundle is None:
        return 0 if args.only else 1
    print(f"bundle complete and verified: {bundle.dir}")
    return 0
