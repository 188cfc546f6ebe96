"""Chromium for the browser tests: CHROMIUM_PATH (or CHROMIUM), else `chromium` on PATH. Where it is
missing and we are root with apt-get, Debian's package is installed once (said on the terminal); else
the browser tests fail with the command that gets it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.services.provision import SERVICES, missing

HOW_TO_GET = "`apt-get install chromium` (Debian; Ubuntu: `chromium-browser`), or set CHROMIUM_PATH=<binary>"
INSTALL_TIMEOUT_S = 600
_install_tried = False


def find_chromium() -> Path | None:
    for variable in ("CHROMIUM_PATH", "CHROMIUM"):
        if os.environ.get(variable):
            path = Path(os.environ[variable])
            return path if path.is_file() else None
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return Path(found)
    return None


def _say(line: str) -> None:
    print(f"\n[tests] {line}", file=sys.__stderr__, flush=True)
    SERVICES.notes.append(f"chromium: {line}")


def _apt_install() -> None:
    """`apt-get install -y chromium`, after `apt-get update` when the first try fails (empty lists)."""
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _say(f"Chromium is missing: running `{' '.join(command)}` once (root; up to {INSTALL_TIMEOUT_S} s)")
    try:
        if subprocess.run(command, env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S)
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            if done.returncode != 0:
                _say(f"apt-get failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    except subprocess.TimeoutExpired:
        _say(f"apt-get did not finish in {INSTALL_TIMEOUT_S} s")


def require_chromium() -> Path:
    """The Chromium binary; installs Debian's once where it can; fails the test (naming the command) where not."""
    global _install_tried
    found = find_chromium()
    explicit = os.environ.get("CHROMIUM_PATH") or os.environ.get("CHROMIUM")
    if found is None and not explicit and not _install_tried and os.geteuid() == 0 and shutil.which("apt-get"):
        _install_tried = True
        _apt_install()
        found = find_chromium()
        if found is not None:
            _say(f"installed {found}")
    if found is None:
        where = f"{explicit} does not exist" if explicit else "no Chromium on PATH"
        missing(f"chromium: {where}: {HOW_TO_GET}")
    return found
