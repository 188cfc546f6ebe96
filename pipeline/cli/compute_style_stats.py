"""``compute-style-stats``: the per-channel style mean/std of a bundle's generator, as StyleCLIP computes it."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compute-style-stats", help="compute the style statistics (StyleCLIP's S_mean_std) from the generator",
        description="Draw random z (numpy RandomState(seed), as StyleCLIP), map them to W with truncation 0.7 on "
                    "the first 8 layers, take every layer's style vector and record the per-channel mean and "
                    "std (no image is rendered: seconds to a minute on a CPU). Writes style_stats.npz into the "
                    "bundle and, when the bundle has a manifest, makes it the relevance_stats entry (recorded as "
                    "computed, with samples and seed). `download` does this by itself when no source of "
                    "S_mean_std answers.",
        epilog="example: python -m pipeline compute-style-stats --bundle models/official")
    parser.add_argument("--bundle", required=True, help="bundle directory holding the generator")
    parser.add_argument("--generator", default=None,
                        help="generator file (default: the manifest's, else stylegan2-ffhq-config-f.pt)")
    parser.add_argument("--samples", type=int, default=None, help="random latents (default 100000, as StyleCLIP)")
    parser.add_argument("--seed", type=int, default=None, help="numpy seed of the latents (default 5, as StyleCLIP)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, parser=parser)
    return parser


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from pipeline.errors import MODEL_MISSING, PipelineError
    from pipeline.weights.bundle import MANIFEST, read_manifest
    from pipeline.weights.sources import OFFICIAL
    from pipeline.weights.style_stats import DEFAULT_SAMPLES, DEFAULT_SEED, compute_style_stats_file

    samples = DEFAULT_SAMPLES if args.samples is None else args.samples
    seed = DEFAULT_SEED if args.seed is None else args.seed
    if samples < 2:
        args.parser.error("--samples must be at least 2")
    directory = Path(args.bundle)
    manifest = read_manifest(directory) if (directory / MANIFEST).is_file() else None
    generator = Path(args.generator) if args.generator else directory / (
        manifest.models["generator"].file if manifest and "generator" in manifest.models
        else OFFICIAL["generator"].file)
    if not generator.is_file():
        raise PipelineError(MODEL_MISSING, f"{generator} not found: run `python -m pipeline download --dir "
                                           f"{directory} --only generator` or pass --generator")
    entry = compute_style_stats_file(generator, directory, samples=samples, seed=seed, device=args.device,
                                     progress=not args.quiet, license=OFFICIAL["relevance_stats"].license)
    if manifest is not None:
        manifest.with_entry("relevance_stats", entry).write(directory)
        print(f"manifest: relevance_stats is now {entry.file} (computed, {samples:,} samples, seed {seed}), "
              f"sha256 {entry.sha256}", file=sys.stderr)
    print(directory / entry.file)
    return 0
