"""``python -m pipeline``: one module per subcommand, each with ``register(subparsers)``.

Adding a subcommand is one line in ``COMMANDS``: a module that defines
``register(subparsers) -> argparse.ArgumentParser`` and sets ``func=run`` where ``run(args) -> int`` is the exit
status. Command modules import torch and models inside ``run``, so ``--help`` stays instant.

Exit status: 0 success, 1 a pipeline error (``error: <code>: <message>`` on stderr), 2 a usage error (argparse,
or ``invalid_parameter``: the call itself was wrong), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.errors import INVALID_PARAMETER, PipelineError

COMMANDS = (
    "pipeline.cli.edit",
    "pipeline.cli.verify_golden",
    "pipeline.cli.download",
    "pipeline.cli.compute_style_stats",
    "pipeline.cli.choose_bundle",
    "pipeline.cli.make_dev_bundle",
    "pipeline.cli.precompute_relevance",
    "pipeline.cli.info",
    "pipeline.cli.finetune",
    "pipeline.cli.runs",
    "pipeline.cli.doctor",
)

EPILOG = """\
examples:
  python -m pipeline make-dev-bundle models/dev          # tiny random-weight models, no internet needed
  python -m pipeline edit me.jpg --neutral "a face" --target "a smiling face" --alpha 3 --out smile.jpg
  python -m pipeline edit me.jpg --neutral "face with hair" --target "face with blonde hair" \\
      --alpha -2 --alpha 0 --alpha 2 --beta 0.12 --out blonde.png   # writes blonde_a-2.png, blonde_a0.png, ...
  python -m pipeline download                            # the official weights into models/official
  python -m pipeline choose-bundle                       # which bundle is used, and what is missing
  python -m pipeline verify-golden ../shared/golden      # numerical parity with the reference code

Run `python -m pipeline COMMAND --help` for each command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Edit the face in a photo with a text prompt (StyleCLIP global directions on StyleGAN2, "
                    "e4e inversion, CLIP), and manage the model bundle those need.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except PipelineError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2 if exc.code == INVALID_PARAMETER else 1
    except KeyboardInterrupt:
        print("error: canceled: interrupted", file=sys.stderr)
        return 130
