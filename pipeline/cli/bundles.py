"""Which bundle a command uses: ``--bundle`` if given, else ``pipeline.weights.choice``'s rule (``$MODEL_DIR``, else a
complete ``models/official``, else the development bundle with a loud notice saying why)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.weights.bundle import DEV_WARNING, Bundle


def official_dir(arg: str | None) -> Path:
    """Where ``download`` puts the official weights: ``--dir``, else ``$MODEL_DIR``, else
    ``$MODEL_DOWNLOAD_DIR``, else ``models/official``."""
    from pipeline.weights.choice import default_official_dir

    return Path(arg or os.environ.get("MODEL_DIR") or default_official_dir())


def resolve_bundle(arg: str | None) -> Bundle:
    from pipeline.weights.choice import DEV, choose_bundle, open_bundle

    if arg:
        return Bundle.load(arg)
    choice = choose_bundle(os.environ.get("MODEL_DIR") or None)
    if choice.kind == DEV:
        print(f"NOTICE: no --bundle given, no MODEL_DIR, and no complete bundle in {choice.official_dir}: using "
              f"the development bundle in {choice.dir}.\n{choice.explain()}\n{DEV_WARNING}", file=sys.stderr)
    return open_bundle(choice)
