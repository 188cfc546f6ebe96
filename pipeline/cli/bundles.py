"""Which bundle a command uses: ``--bundle`` if given, else ``$MODEL_DIR`` or ``models/official`` if either holds
one, else the development bundle in ``models/dev`` (built on first use, with a loud notice)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.bundle import DEV_WARNING, MANIFEST, OFFICIAL_DIR, Bundle, find_bundle


def official_dir(arg: str | None) -> Path:
    """Where ``download`` puts the official weights: ``--dir``, else ``$MODEL_DIR``, else ``models/official``."""
    return Path(arg or os.environ.get("MODEL_DIR") or OFFICIAL_DIR)


def resolve_bundle(arg: str | None) -> Bundle:
    if arg:
        return Bundle.load(arg)
    env = os.environ.get("MODEL_DIR")
    bundle = find_bundle(env)
    if bundle.is_dev and not (env and (Path(env) / MANIFEST).is_file()):
        print(f"NOTICE: no --bundle given and no bundle in $MODEL_DIR or {OFFICIAL_DIR}: using the development "
              f"bundle in {bundle.dir}.\n{DEV_WARNING}", file=sys.stderr)
    return bundle
