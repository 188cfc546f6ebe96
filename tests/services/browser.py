"""Chromium for the browser tests: CHROMIUM_PATH (or CHROMIUM), else `chromium` on PATH. Where it is
missing and we are root with apt-get, Debian's package is installed once (said on the terminal); else
the browser tests fail with the command that gets it (tests/services/debian.py)."""

from __future__ import annotations

from pathlib import Path

from tests.services.debian import DebianProgram, find, require

HOW_TO_GET = "`apt-get install chromium` (Debian; Ubuntu: `chromium-browser`), or set CHROMIUM_PATH=<binary>"
CHROMIUM = DebianProgram("chromium", ("chromium", "chromium-browser"), ("chromium",),
                         ("CHROMIUM_PATH", "CHROMIUM"), HOW_TO_GET)  # fmt: skip


def find_chromium() -> Path | None:
    return find(CHROMIUM)


def require_chromium() -> Path:
    """The Chromium binary; installs Debian's once where it can; fails the test (naming the command) where not."""
    return require(CHROMIUM)
