"""``info``: what a bundle holds, where each file came from, and under which license."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info", help="show the model bundle: files, versions, sources, licenses",
        description="Print each model of the bundle (file, size, content version, source, license) and whether "
                    "it is the random-weight development bundle. With --verify, check every sha256.",
        epilog="example: python -m pipeline info --bundle models/official --verify")
    parser.add_argument("--bundle", default=None, help="bundle directory (default: $MODEL_DIR, models/official, else models/dev)")
    parser.add_argument("--verify", action="store_true", help="check the sha256 of every file (slow for real weights)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.cli.bundles import resolve_bundle
    from pipeline.weights.bundle import Bundle

    bundle = resolve_bundle(args.bundle)
    if args.verify:
        bundle = Bundle.load(bundle.dir, verify=True)
    print(f"bundle   {bundle.dir}")
    print(f"kind     {'DEVELOPMENT (random weights, results meaningless)' if bundle.is_dev else 'official weights'}")
    for role, entry in bundle.manifest.models.items():
        size = bundle.path(role).stat().st_size
        print(f"\n{role}")
        print(f"  file     {entry.file} ({size:,} bytes)")
        print(f"  version  {bundle.version(role)}" + ("  (sha256 verified)" if args.verify and entry.sha256 else ""))
        if entry.hash:
            print(f"  hash     {entry.hash}" + (f" ({entry.computed.get('samples'):,} samples, seed "
                                               f"{entry.computed.get('seed')})" if entry.computed else ""))
        print(f"  source   {entry.source}")
        print(f"  license  {entry.license}")
        if entry.url:
            print(f"  url      {entry.url}")
        for other in entry.sources:
            if other.url != entry.url:
                print(f"  mirror   {other.url}")
    return 0
