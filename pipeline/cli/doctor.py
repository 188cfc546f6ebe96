"""``doctor``: are the bundle's models the real ones, and wired right? PASS/FAIL/SKIP per check, exit 0 or 1."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DESCRIPTION = """\
Check a model bundle: the manifest, every file (present, not a web page saved in its place, size and sha256 as
the manifest says), that each model loads and fits the others, and that a face renders from a random latent.
On real weights it then checks what only real weights pass: CLIP sees a face in that render; inverting the
sample photo (pipeline/samples/astronaut.jpg) gives it back; "a face" -> "a smiling face" makes CLIP's smiling
score rise over alphas 0, 2, 4. On the development bundle those are skipped: they need the real weights.
Exit status: 0 when every check that ran passed, 1 when one failed (its line names the file or the check)."""

EPILOG = """\
examples:
  python -m pipeline doctor                           # the bundle the other commands would use
  python -m pipeline doctor --bundle models/official  # a given folder, even a broken one
  python -m pipeline doctor --fast --json             # files, hashes, loads and a render; a JSON report
thresholds and their sources: docs/MODELS.md, "What doctor checks\""""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "doctor", help="check that the bundle's models are real and wired right (PASS/FAIL per check)",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None,
                        help="bundle directory (default: $MODEL_DIR, models/official, else models/dev)")
    parser.add_argument("--fast", action="store_true",
                        help="files, hashes, loads and a render only (what `make run` checks at start)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--device", default="cpu", help="torch device for the model checks (default: cpu)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.doctor import diagnose

    directory = bundle_dir(args.bundle)
    if not args.json:
        print(f"doctor: {directory}{' (--fast)' if args.fast else ''}", flush=True)
    report = diagnose(directory, fast=args.fast, device=args.device, emit=None if args.json else print_check)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    print(summary(report))
    return 0 if report.ok else 1


def bundle_dir(arg: str | None) -> Path:
    """The folder to diagnose: ``--bundle`` as given (not loaded first: it may be the broken one), else the one the
    other commands would use (``pipeline.weights.choice``), the development bundle built first when that is the choice."""
    from pipeline.weights.choice import DEV, choose_bundle, open_bundle

    if arg:
        return Path(arg)
    choice = choose_bundle(os.environ.get("MODEL_DIR") or None)
    if choice.kind == DEV:
        print(f"NOTICE: no --bundle given and no complete bundle in $MODEL_DIR or {choice.official_dir}: checking "
              f"the development bundle in {choice.dir}.", file=sys.stderr)
        open_bundle(choice)  # builds it when absent, and logs why the official bundle is not used
    return choice.dir


def print_check(check) -> None:
    timing = f"  ({check.seconds:.1f} s)" if check.seconds >= 0.5 else ""
    print(f"{str(check.status).upper():4}  {check.name:18} {check.reason}{timing}", flush=True)


def summary(report) -> str:
    from pipeline.doctor import Status

    counts = (f"{report.count(Status.PASS)} passed, {report.count(Status.FAIL)} failed, "
              f"{report.count(Status.SKIP)} skipped")
    if not report.ok:
        first = next(c for c in report.checks if c.status is Status.FAIL)
        return f"FAILED ({counts}): first failure: {first.name}. Fix it and run doctor again."
    if report.dev:
        return (f"OK ({counts}): the development bundle is complete and wired right. It has random weights, so "
                f"the semantic checks need the real ones: `python -m pipeline download`, then doctor again.")
    if report.fast:
        return f"OK ({counts}): files, loads and a render are fine; run doctor without --fast for the semantic checks."
    return f"OK ({counts}): the models are the real ones and wired right."
