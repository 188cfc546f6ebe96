"""Which bundle a command uses when none is named: ``--bundle``, else ``$MODEL_DIR``, else ``./models``, else the
development bundle in ``models/dev`` (built on first use, with a loud notice)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.bundle import DEV_WARNING, MANIFEST, Bundle

REPO_ROOT = Path(__file__).resolve().parents[2]


def official_dir(arg: str | None) -> Path:
    """Where ``download`` puts the official weights."""
    return Path(arg or os.environ.get("MODEL_DIR") or REPO_ROOT / "models")


def dev_dir() -> Path:
    return REPO_ROOT / "models" / "dev"


def resolve_bundle(arg: str | None) -> Bundle:
    """Load the named bundle, or the first default that holds one (see the module docstring)."""
    if arg:
        return Bundle.load(arg)
    for candidate in (os.environ.get("MODEL_DIR"), REPO_ROOT / "models"):
        if candidate and (Path(candidate) / MANIFEST).is_file():
            return Bundle.load(candidate)
    directory = dev_dir()
    print(f"NOTICE: no model bundle given (--bundle), none in $MODEL_DIR or {REPO_ROOT / 'models'}; using the "
          f"development bundle in {directory}.\n{DEV_WARNING}", file=sys.stderr)
    if not (directory / MANIFEST).is_file():
        from pipeline.bundle import make_dev_bundle

        print(f"building the development bundle in {directory} ...", file=sys.stderr)
        return make_dev_bundle(directory)
    return Bundle.load(directory)
