"""Programs the tests take from Debian packages (Chromium, WebKitWebDriver, Xvfb, Prometheus): an explicit
path variable, else the program on PATH. Where it is missing and we are root with apt-get, the package is
installed once (said on the terminal); else the tests that need it fail naming the command that gets it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.services.provision import SERVICES, missing

INSTALL_TIMEOUT_S = 600
_install_tried: set[str] = set()


@dataclass(frozen=True)
class DebianProgram:
    """One program: the `names` it may have on PATH, the `variables` that may name it, and its `packages`."""

    label: str
    names: tuple[str, ...]
    packages: tuple[str, ...]
    variables: tuple[str, ...] = ()
    how_to_get: str = ""

    def hint(self) -> str:
        variable = f", or set {self.variables[0]}=<binary>" if self.variables else ""
        return self.how_to_get or f"`apt-get install {' '.join(self.packages)}` (Debian){variable}"


def _say(program: DebianProgram, line: str) -> None:
    print(f"\n[tests] {line}", file=sys.__stderr__, flush=True)
    SERVICES.notes.append(f"{program.label}: {line}")


def find(program: DebianProgram) -> Path | None:
    """The program named by its variable (when set, that path and no other), else the first on PATH."""
    for variable in program.variables:
        if os.environ.get(variable):
            path = Path(os.environ[variable])
            return path if path.is_file() else None
    for name in program.names:
        if found := shutil.which(name):
            return Path(found)
    return None


def _apt_install(program: DebianProgram) -> None:
    """`apt-get install -y PACKAGES`, after `apt-get update` when the first try fails (empty lists)."""
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *program.packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _say(
        program,
        f"{program.label} is missing: running `{' '.join(command)}` once (root; up to {INSTALL_TIMEOUT_S} s)",
    )
    try:
        if subprocess.run(command, env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S).returncode != 0:
            subprocess.run(
                ["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S
            )
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            if done.returncode != 0:
                _say(program, f"apt-get failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    except subprocess.TimeoutExpired:
        _say(program, f"apt-get did not finish in {INSTALL_TIMEOUT_S} s")


def require(program: DebianProgram) -> Path:
    """The program's binary; installs its package once where it can; fails the test (naming the command) where not."""
    found = find(program)
    explicit = next((os.environ[v] for v in program.variables if os.environ.get(v)), None)
    can_install = os.geteuid() == 0 and shutil.which("apt-get")
    if found is None and not explicit and program.label not in _install_tried and can_install:
        _install_tried.add(program.label)
        _apt_install(program)
        found = find(program)
        if found is not None:
            _say(program, f"installed {found}")
    if found is None:
        where = f"{explicit} does not exist" if explicit else f"no {' or '.join(program.names)} on PATH"
        missing(f"{program.label}: {where}: {program.hint()}")
    return found


PROMETHEUS = DebianProgram("prometheus", ("prometheus",), ("prometheus",), ("PROMETHEUS_PATH",))
PROMTOOL = DebianProgram("promtool", ("promtool",), ("prometheus",), ("PROMTOOL_PATH",))
# WebKit for the browser journeys (tests/web/phone.py): the WebDriver server, which brings WebKitGTK and its
# MiniBrowser, and a virtual X display for its windows.
WEBKIT_DRIVER = DebianProgram("WebKitWebDriver", ("WebKitWebDriver",), ("webkit2gtk-driver",), ("WEBKIT_DRIVER_PATH",))
XVFB = DebianProgram("Xvfb", ("Xvfb",), ("xvfb",), ("XVFB_PATH",))
