"""The download rehearsed against hubs on 127.0.0.1 (tests/pipeline/hub.py) serving the development bundle's
models in the official file formats, with the sources table pointed at them through MODEL_SOURCES_FILE: each
file's first source answers 404, the second a sign-in page, the third redirects to another port whose transfer
of one file breaks off midway. `python -m pipeline download` exits 0 with its table, and `make run`
(`python -m api dev`) on a fresh folder downloads by itself and serves with that bundle, no development banner."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from api.processes import free_port
from tests.conftest import REPO_ROOT, face_jpeg
from tests.pipeline.hub import Hub, official_format_files

_SERVICE_VARIABLES = ("MODEL_DIR", "DATABASE_URL", "REDIS_URL", "STORAGE_BACKEND", "STORAGE_DIR", "S3_ENDPOINT_URL",
                      "MODEL_MIRROR_URL")
KEY = "dev-rehearsal-key"


@pytest.fixture(scope="module")
def hub(dev_bundle, tmp_path_factory):
    """The hubs, and a sources file: sha256 published for CLIP and the style statistics, none for the rest
    (pinned once they load)."""
    server = Hub()
    files = official_format_files(dev_bundle.dir)
    server.routes.html |= {f"login/{role}" for role in files}
    entries = {}
    for role, (name, data) in files.items():
        published = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} \
            if role in ("clip", "relevance_stats") else {}
        entries[role] = {"sources": [{"url": f"{server.url}/gone/{name}", **published},
                                     {"url": f"{server.url}/login/{role}", **published},
                                     {"url": server.add(f"{role}/resolve/0123/{name}", data), **published}]}
    sources = tmp_path_factory.mktemp("sources") / "sources.json"
    sources.write_text(json.dumps(entries))
    yield server, sources
    server.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARIABLES}
    return {**env, "PYTHONPATH": str(REPO_ROOT), **extra}


def test_download_passes_404_html_redirect_and_a_broken_transfer(hub, tmp_path):
    server, sources = hub
    server.routes.cut_once["encoder/resolve/0123/e4e_ffhq_encode.pt"] = 50_000
    done = subprocess.run([sys.executable, "-m", "pipeline", "download", "--dir", str(tmp_path), "--quiet"],
                          env=_env(MODEL_SOURCES_FILE=str(sources)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:7]}
    assert rows["ViT-B-32.pt"][3] == "verified" and rows["S_mean_std"][3] == "verified"
    assert rows["stylegan2-ffhq-config-f.pt"][3] == "pinned" and rows["fs3.npy"][3] == "pinned"
    assert rows["sfe_editor_light.pt"][3] == "pinned"  # loaded as SFE (load_sfe's key check) before pinning
    assert all(row[1].startswith(server.url) and "/resolve/0123/" in row[1] for row in rows.values())
    assert "bundle complete" in done.stdout
    assert "HTTP 404" in done.stderr and "answered text/html" in done.stderr and "resuming" in done.stderr
    assert ("encoder/resolve/0123/e4e_ffhq_encode.pt", "bytes=50000-") in server.routes.ranges


@pytest.mark.services  # no external services, but the dev server's worker processes
def test_make_run_downloads_and_serves_the_official_bundle(hub, tmp_path):
    server, sources = hub
    port = free_port()
    env = _env(MODEL_SOURCES_FILE=str(sources), MODEL_DOWNLOAD_DIR=str(tmp_path / "official"), PORT=str(port),
               DEV_API_KEY=KEY, METRICS_PORT=str(free_port()), LIVENESS_DIR=str(tmp_path / "liveness"))
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "api", "dev"], cwd=tmp_path, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "dev server not ready:\n" + log_path.read_text()[-4000:]
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        log = log_path.read_text()
        assert "bundle complete" in log and "DEVELOPMENT MODEL BUNDLE" not in log
        assert f"models: official bundle in {tmp_path / 'official'}" in log
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
            image = client.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")}).json()
            edit = client.post("/v1/edits", json={"image": image["id"], "neutral": "a face",
                                                  "target": "a smiling face", "alphas": [1]}).json()
            deadline = time.monotonic() + 300
            while (state := client.get(f"/v1/edits/{edit['id']}").json())["status"] in ("starting", "processing"):
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                time.sleep(0.3)
        assert state["status"] == "succeeded", state
        assert state["model"]["dev_bundle"] is False
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
