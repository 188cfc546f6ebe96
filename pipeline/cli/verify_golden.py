"""``verify-golden DIR``: numerical parity of our models with the reference implementations."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify-golden", help="check our models against the reference implementations' numbers",
        description="Rebuild deterministic random weights from a golden fixture directory (its meta.json and "
                    "layouts.json), run our StyleGAN2, e4e, CLIP, global-direction, alignment and "
                    "StyleFeatureEditor code, and compare with the reference outputs stored there. Exit status 0 "
                    "only if every check passes (and at least one ran).",
        epilog="examples: python -m pipeline verify-golden ../shared/golden --only stylegan2 --only clip; "
               "python -m pipeline verify-golden ../shared/golden-sfe --device cuda")
    parser.add_argument("dir", help="fixture directory (format: its README.md)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--only", action="append", default=[], metavar="FAMILY",
                        help="run only this family of checks: stylegan2, e4e, clip, boundary, align, sfe "
                             "(repeatable); a family whose files the directory lacks is skipped")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.errors import INVALID_PARAMETER, PipelineError
    from pipeline.golden import CHECK_MODULES, run_checks

    if not (Path(args.dir) / "meta.json").is_file():
        raise PipelineError(INVALID_PARAMETER, f"{args.dir} is not a golden fixture directory (no meta.json)")
    unknown = sorted(set(args.only) - set(CHECK_MODULES))
    if unknown:
        raise PipelineError(INVALID_PARAMETER, f"unknown check families {unknown}; known: {', '.join(CHECK_MODULES)}")
    results = run_checks(args.dir, device=args.device, only=tuple(args.only), emit=lambda s: print(s, flush=True))
    return 0 if results and all(c.ok for c in results) else 1
