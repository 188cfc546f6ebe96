"""`make run` (`python -m api dev`) on a fresh folder: SQLite, local storage and an embedded Redis,
one worker; upload → edit → poll → download through the authenticated output URLs; Ctrl-C stops
everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, _child_pids, face_jpeg, free_port

_SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "STORAGE_BACKEND", "STORAGE_DIR", "S3_ENDPOINT_URL")


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _child_pids(pid):
        found += [child, *_descendants(child)]
    return found


def _running_in(directory: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) == directory:
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start(dev_bundle, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """``python -m api dev`` in a fresh folder, once /readyz answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARIABLES}
    env.update(PYTHONPATH=str(REPO_ROOT), PORT=str(port), MODEL_DIR=str(dev_bundle), DEV_API_KEY="dev-test-key")
    log = (tmp_path / "dev.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "api", "dev"], cwd=tmp_path, env=env, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            assert server.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "dev server not ready"
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    return server, base
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    except BaseException:
        _stop(server, tmp_path, signal.SIGINT)
        raise


def _stop(server: subprocess.Popen, tmp_path: Path, sig: signal.Signals) -> list[int]:
    """Send ``sig``; the processes it left running (then killed), the embedded Redis included."""
    started = _descendants(server.pid)
    server.send_signal(sig)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"the dev server did not stop on {sig.name}")
    finally:
        time.sleep(1)
        # Children, and the embedded Redis (daemonized, so found by its working directory).
        leftovers = [pid for pid in started + _descendants(server.pid) + _running_in(tmp_path / "data")
                     if _alive(pid)]
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    return leftovers


@pytest.mark.services  # no external services, but a worker process and the dev bundle
def test_dev_server_with_embedded_defaults(dev_bundle, tmp_path):
    server, base = _start(dev_bundle, tmp_path)
    try:
        assert httpx.get(f"{base}/app-config.json").json() == {"api_base": "/v1", "dev_api_key": "dev-test-key"}
        client = httpx.Client(base_url=base, headers={"Authorization": "Bearer dev-test-key"}, timeout=30)
        image = client.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")}).json()
        edit = client.post("/v1/edits", json={"image": image["id"], "neutral": "a face",
                                              "target": "a smiling face", "alphas": [-2, 0, 2], "beta": 0.15})
        edit_id = edit.json()["id"]
        deadline = time.monotonic() + 300
        while (state := client.get(f"/v1/edits/{edit_id}").json())["status"] in ("starting", "processing"):
            assert time.monotonic() < deadline, (tmp_path / "dev.log").read_text()[-3000:]
            time.sleep(0.3)
        assert state["status"] == "succeeded", state
        for url in state["output"]:
            assert url.startswith(f"{base}/v1/edits/{edit_id}/outputs/")
            assert httpx.get(url).status_code == 401  # local-storage URLs need the key
            assert client.get(url).headers["content-type"] == "image/jpeg"
        assert (tmp_path / "data" / "faceedit.db").is_file()
    finally:
        leftovers = _stop(server, tmp_path, signal.SIGINT)
    assert leftovers == [], "Ctrl-C left processes running"


@pytest.mark.services
def test_sigterm_stops_the_worker_and_its_beat(dev_bundle, tmp_path):
    """What a process manager (docker stop, systemd) sends: it must not orphan the Celery worker."""
    server, _ = _start(dev_bundle, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while len([pid for pid in _descendants(server.pid) if _alive(pid)]) < 2:  # worker and its beat
            assert time.monotonic() < deadline, f"worker and beat never both started: {_descendants(server.pid)}"
            time.sleep(0.3)
    finally:
        leftovers = _stop(server, tmp_path, signal.SIGTERM)
    assert leftovers == [], "SIGTERM left processes running"
    assert server.returncode == 0  # a requested stop, cleaned up (not killed by the re-raised signal: -15)
