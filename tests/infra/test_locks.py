"""requirements/lock*.txt (`make lock`) are up to date with their inputs, fully hash-pinned, and what the
Dockerfiles install; torch's CPU and CUDA builds go where requirements/README.md says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.infra.specs import DOCKER_DIR, REPO, parse_dockerfile

REQUIREMENTS = REPO / "requirements"
MAKEFILE = (REPO / "Makefile").read_text()
# Each lock and the inputs `make lock` compiles it from, and the CPU lock's filter, as the Makefile says.
LOCKS = {out.removeprefix("requirements/"): [i.removeprefix("requirements/") for i in inputs.split()]
         for out, inputs in re.findall(r"^\t\$\(COMPILE\) -o (\S+) (.+)$", MAKEFILE, re.M)}  # fmt: skip
CUDA_ONLY = re.compile(re.search(r"^CUDA_ONLY := (.+)$", MAKEFILE, re.M)[1])
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def inputs(name: str) -> list[Requirement]:
    """The requirements of an input file, following `-r`."""
    found = []
    for raw in (REQUIREMENTS / name).read_text().splitlines():
        line = raw.split(" #")[0].strip()
        if line.startswith("-r "):
            found += inputs(line.removeprefix("-r ").strip())
        elif line and not line.startswith("#"):
            found.append(Requirement(line))
    return found


def pins(lock: str) -> dict[str, str]:
    """name → exact version of every package of a lock."""
    return {canonicalize_name(m[1]): m[2] for m in map(_PIN.match, (REQUIREMENTS / lock).read_text().splitlines())
            if m}  # fmt: skip


def test_make_lock_writes_the_locks_the_images_and_the_venv_install() -> None:
    assert LOCKS == {"lock.txt": ["dev.txt"], "lock-worker.txt": ["pipeline.txt", "service.txt"],
                     "lock-service.txt": ["service.txt"]}  # fmt: skip
    assert "$(STAMP): $(LOCK)" in MAKEFILE and "LOCK    := requirements/lock.txt" in MAKEFILE


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_input_is_locked_at_a_version_it_allows(lock: str) -> None:
    locked = pins(lock)
    for source in LOCKS[lock]:
        for requirement in inputs(source):
            if requirement.marker and not requirement.marker.evaluate():
                continue
            name = canonicalize_name(requirement.name)
            assert name in locked, f"{lock}: {requirement} ({source}) is not locked: run `make lock`"
            assert requirement.specifier.contains(locked[name], prereleases=True), (
                f"{lock}: {name}=={locked[name]} does not satisfy {requirement} ({source}): run `make lock`")


@pytest.mark.parametrize("lock", [*sorted(LOCKS), "lock-worker-cpu.txt"])
def test_every_package_is_pinned_with_hashes(lock: str) -> None:
    entries = re.split(r"\n(?=[A-Za-z0-9])", (REQUIREMENTS / lock).read_text())
    packages = [entry for entry in entries if _PIN.match(entry)]
    assert packages, lock
    for entry in packages:
        assert "--hash=sha256:" in entry, f"{lock}: no hash for {entry.splitlines()[0]}"
    assert all(_PIN.match(entry) or entry.lstrip().startswith("#") for entry in entries if entry.strip()), lock


def test_the_cpu_lock_is_the_worker_lock_less_the_cuda_build() -> None:
    kept, cuda = [], False
    for line in (REQUIREMENTS / "lock-worker.txt").read_text().splitlines(keepends=True):
        if re.match(r"[a-z0-9]", line):
            cuda = bool(CUDA_ONLY.match(line))
        if not cuda:
            kept.append(line)
    assert (REQUIREMENTS / "lock-worker-cpu.txt").read_text() == "".join(kept), "stale: run `make lock`"
    cpu = pins("lock-worker-cpu.txt")
    assert not [name for name in cpu if CUDA_ONLY.match(f"{name}==")]
    assert {"torch", "torchvision"} <= set(pins("lock-worker.txt")) and "nvidia-cublas" not in pins("lock-service.txt")


def _pip_installs(dockerfile: Path) -> list[str]:
    runs = [i.arguments for i in parse_dockerfile(dockerfile) if i.keyword == "RUN"]
    return [part.strip() for run in runs for part in run.split("&&") if part.strip().startswith("pip install")]


@pytest.mark.parametrize(("dockerfile", "install"), [
    ("api.Dockerfile", "pip install --require-hashes -r requirements/lock-service.txt"),
    ("worker-cuda.Dockerfile", "pip install --require-hashes -r requirements/lock-worker.txt"),
    # torch comes first from another index: its dependencies are in the lock, installed as listed
    ("worker-cpu.Dockerfile", "pip install --no-deps --require-hashes -r requirements/lock-worker-cpu.txt"),
])  # fmt: skip
def test_images_install_from_their_lock(dockerfile: str, install: str) -> None:
    installs = _pip_installs(DOCKER_DIR / dockerfile)
    assert installs[-1] == install, installs
    assert all("requirements/" not in install or "--require-hashes" in install for install in installs)


def test_torch_builds_and_versions() -> None:
    wanted = {r.name: str(r.specifier).removeprefix("==") for r in inputs("pipeline.txt")
              if r.name in ("torch", "torchvision")}  # fmt: skip
    assert set(wanted) == {"torch", "torchvision"}
    for lock in ("lock.txt", "lock-worker.txt"):
        assert {name: pins(lock)[name] for name in wanted} == wanted, lock
    cpu = _pip_installs(DOCKER_DIR / "worker-cpu.Dockerfile")[0].split()
    assert '"${TORCH_INDEX_URL}"' in cpu and "--no-deps" in cpu
    assert sorted(a for a in cpu if "==" in a) == [f"{name}=={version}+cpu" for name, version in sorted(wanted.items())]
    assert "whl/cpu" in (DOCKER_DIR / "worker-cpu.Dockerfile").read_text()
    assert "torch" not in " ".join(_pip_installs(DOCKER_DIR / "worker-cuda.Dockerfile"))
