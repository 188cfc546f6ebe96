"""``download``: bring the official weights into a bundle directory (internet, a mirror, or files copied in)."""

from __future__ import annotations

import argparse

from pipeline.weights.bundle import ROLES


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "download", help="download and check the official weights (generator, encoder, CLIP, StyleCLIP files)",
        description="Fill DIR with the official StyleGAN2 FFHQ generator, e4e encoder, CLIP ViT-B/32, StyleCLIP's "
                    "relevance matrix fs3.npy and the style statistics S_mean_std. Each file's sources are tried "
                    "in order (MODEL_MIRROR_URL first when set; the list, pinned to commits, is in "
                    "pipeline/weights/sources.py and docs/MODELS.md). An answer that is a web page, has the wrong size or "
                    "a hash the publisher did not give is refused and the next source tried; a source with no "
                    "published hash is accepted only once the file loads as its model, and its sha256 is then "
                    "pinned. Broken transfers resume. Files already in DIR (copied by hand) are checked the same "
                    "way, no internet needed. When no source of the style statistics answers, they are computed "
                    "from the generator (as `compute-style-stats`). One file failing does not stop the others; "
                    "the run ends with a table per file (source used, bytes, hash verified / pinned / computed / "
                    "failed, reason). manifest.json is written only when every file is in place, so an "
                    "unfinished download is never taken for a bundle. Exit 0 when DIR holds a complete bundle "
                    "(with --only: when those files are in), 1 otherwise. The generator and the encoder are "
                    "licensed for non-commercial use only (docs/MODELS.md).",
        epilog="examples:\n  python -m pipeline download\n"
               "  MODEL_MIRROR_URL=https://models.example.org/faceedit python -m pipeline download --dir /srv/models",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="bundle directory (default: $MODEL_DIR, else models/official)")
    parser.add_argument("--only", action="append", choices=ROLES, default=[], help="fetch only this model (repeatable)")
    parser.add_argument("--stats-samples", type=int, default=None,
                        help="samples when the style statistics are computed (default 100000, as StyleCLIP)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.cli.bundles import official_dir
    from pipeline.weights.download import download_bundle

    directory = official_dir(args.dir)
    report = download_bundle(directory, progress=not args.quiet, only=tuple(args.only),
                             stats_samples=args.stats_samples)
    print(report.table())
    if report.bundle is not None:
        print(f"\nbundle complete: {report.bundle.dir}")
        return 0
    wanted = [o for o in report.outcomes if not args.only or o.role in args.only]
    if args.only and all(o.ok for o in wanted):
        print(f"\n{', '.join(o.file for o in wanted)}: done; the bundle in {directory} is not complete yet")
        return 0
    from pipeline.weights.choice import choose_bundle

    print("\n" + choose_bundle(official_dir=directory).explain())
    return 1
