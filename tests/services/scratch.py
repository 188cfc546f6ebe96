"""Temporary folders for the servers a test session starts, and the sweep of those a killed session
left behind (their servers died with it: see api/processes.py `die_with_parent`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "faceedit-test-"
_OWNER = "owner.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> None:
    """Remove the folders of test sessions that are gone (a SIGKILLed pytest cannot clean up)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            owner = int((folder / _OWNER).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(folder, ignore_errors=True)


def scratch_dir(kind: str) -> Path:
    """A new folder for one server, marked with this process's id so a later session can sweep it."""
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-"))
    (folder / _OWNER).write_text(str(os.getpid()))
    return folder
