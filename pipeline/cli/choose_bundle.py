"""``choose-bundle``: which bundle the CLI, ``make run`` and the worker would use, and why (loads no model)."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "choose-bundle", help="say which model bundle would be used, and what keeps the official one out",
        description="Apply the one bundle rule of the CLI, `make run` and the worker (pipeline/weights/choice.py): "
                    "MODEL_DIR when set; else models/official when complete (every file present with its "
                    "size; no hashing); else the development bundle. Prints the choice and, when the official "
                    "bundle is incomplete, each missing file, why its last download failed and how to fix it. "
                    "Exit 0, or 1 when MODEL_DIR is set but not a complete bundle.",
        epilog="example: python -m pipeline choose-bundle --json")
    parser.add_argument("--model-dir", default=None, help="as MODEL_DIR (default: $MODEL_DIR)")
    parser.add_argument("--json", action="store_true", help="one JSON object (for `make run`)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from pipeline.weights.choice import choose_bundle

    choice = choose_bundle(args.model_dir or os.environ.get("MODEL_DIR") or None)
    if args.json:
        print(json.dumps(choice.to_dict()))
    else:
        print(f"{choice.kind}: {choice.dir}")
        if choice.problems:
            print(choice.explain())
        for line in choice.optional_missing():
            print(f"note: {line}")
    return 0 if choice.usable else 1
