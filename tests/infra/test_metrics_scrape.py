"""One real edit through the API and a real worker, then what operators see: the worker's /metrics
with stage timings, the API's /metrics by route, JSON log lines carrying the edit id, and a passing
liveness probe."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import WorkerProcess, face_jpeg, free_port, make_api, service_settings, settings_env

pytestmark = pytest.mark.services


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_one_edit_shows_up_in_metrics_logs_and_liveness(pg_url, redis_url, s3_endpoint, dev_bundle, tmp_path: Path):
    port = free_port()
    settings = service_settings(
        pg_url, redis_url, s3_endpoint, model_dir=dev_bundle,
        metrics_port=port, log_format="json", liveness_dir=tmp_path / "liveness",
    )  # fmt: skip
    worker = WorkerProcess(settings, tmp_path / "worker.log", beat=False).start()
    try:
        api = make_api(settings)
        api_before = _samples(api.get("/metrics").text)  # the registry is shared with earlier tests
        image = api.upload(face_jpeg())
        response = api.post("/v1/edits", json={
            "image": image["id"], "neutral": "a face", "target": "a smiling face", "alphas": [0, 2], "beta": 0.1,
        })  # fmt: skip
        assert response.status_code == 201, response.text
        edit = api.wait(response.json()["id"], timeout=240)
        assert edit["status"] == "succeeded", edit
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            worker_metrics = _samples(answer.read().decode())
        liveness = subprocess.run(
            [sys.executable, "-m", "worker.liveness", "check"],
            env=settings_env(settings), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        worker.stop()

    # Stage timings: one observation per stage the edit went through, matching the edit resource.
    print("worker stage seconds:", {labels[0][1]: round(value, 3) for (name, labels), value in worker_metrics.items()
                                    if name == "faceedit_job_stage_seconds_sum"})  # fmt: skip
    for stage in ("align", "invert", "direction", "synthesize", "paste", "store", "total"):
        assert worker_metrics[("faceedit_job_stage_seconds_count", (("stage", stage),))] == 1, stage
    total = worker_metrics[("faceedit_job_stage_seconds_sum", (("stage", "total"),))]
    assert total == pytest.approx(edit["metrics"]["total_seconds"], abs=0.01)
    assert worker_metrics[("faceedit_job_queue_wait_seconds_count", ())] == 1
    assert worker_metrics[("faceedit_jobs_total", (("outcome", "succeeded"),))] == 1
    assert worker_metrics[("faceedit_inversion_cache_total", (("result", "miss"),))] == 1
    assert worker_metrics[("faceedit_jobs_in_progress", ())] == 0

    # The API side, by route template and status.
    api_after = _samples(api.get("/metrics").text)

    def requests(method: str, route: str, status: str) -> float:
        key = ("faceedit_http_requests_total", (("method", method), ("route", route), ("status", status)))
        return api_after.get(key, 0) - api_before.get(key, 0)

    assert requests("POST", "/v1/edits", "201") == 1
    assert requests("POST", "/v1/images", "201") == 1
    assert requests("GET", "/v1/edits/{edit_id}", "200") >= 1

    # Structured logs: JSON lines, the edit's lines carry its id.
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert any(line.get("edit_id") == edit["id"] for line in lines), worker.log()[-3000:]
    assert not [line for line in lines if line["level"] == "ERROR"], worker.log()[-3000:]

    assert liveness.returncode == 0, liveness.stderr
    assert "alive" in liveness.stdout
