"""Flower, as compose and k8s run it (`python -m api flower-gate`: the login gate, which starts Flower behind
it), sees our worker."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from api.processes import free_port, stop_process
from tests.infra.specs import REPO

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
pytestmark = pytest.mark.services


def _get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def test_flower_lists_the_worker_behind_basic_auth(tmp_path: Path) -> None:
    queue = f"flower-test-{uuid.uuid4().hex[:8]}"
    hostname = f"flowertest-{uuid.uuid4().hex[:8]}@localhost"
    port = free_port()
    auth = "operator:s3cret-pass"
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "STORAGE_DIR": str(tmp_path / "storage"),
        "MODEL_DIR": str(tmp_path / "no-models"),
        "METRICS_PORT": str(free_port()),
        "LIVENESS_DIR": str(tmp_path / "liveness"),
        "PYTHONPATH": str(REPO),
        "FLOWER_GATE_AUTH": auth,
    }
    common = dict(cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo", "-Q", queue,
         "-n", hostname, "--events", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        **common,
    )
    flower = subprocess.Popen(
        [sys.executable, "-m", "api", "flower-gate", "--host", "127.0.0.1", "--port", str(port), "--",
         "--purge_offline_workers=300"],
        **common,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, workers = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            status, body = _get(f"{base}/api/workers?refresh=1", auth)
            if status == 200:
                workers = json.loads(body)
                if hostname in workers:
                    break
            assert worker.poll() is None and flower.poll() is None, "worker or flower exited"
            time.sleep(1)
        assert hostname in workers, f"flower lists {sorted(workers)}"
        assert any(q["name"] == queue for q in workers[hostname].get("active_queues", []))
        # Without or with wrong credentials: refused.
        assert _get(f"{base}/api/workers")[0] == 401
        assert _get(f"{base}/api/workers", "operator:wrong")[0] == 401
        assert _get(f"{base}/", None)[0] == 401
    finally:
        worker_output = stop_process(worker)
        flower_output = stop_process(flower)
    assert "Traceback" not in worker_output, worker_output[-3000:]
    assert "Traceback" not in flower_output, flower_output[-3000:]
