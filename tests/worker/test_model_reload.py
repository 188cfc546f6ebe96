"""A fine-tuned encoder promoted into the worker's bundle serves the next edit, without a worker restart."""

from __future__ import annotations

import shutil

import pytest

from pipeline.train import runs
from pipeline.weights.bundle import Bundle
from tests.conftest import WorkerProcess, drop_queues, face_jpeg, make_api, service_settings
from tests.pipeline.train.test_runs import fake_run

pytestmark = pytest.mark.services


def _edit(api, image_id: str) -> dict:
    response = api.post("/v1/edits", json={"image": image_id, "neutral": "a face", "target": "a smiling face",
                                           "alphas": [1], "beta": 0.15})  # fmt: skip
    assert response.status_code == 201, response.text
    return api.wait(response.json()["id"])


def test_promoted_encoder_is_used_by_the_running_worker(pg_url, redis_url, s3_endpoint, dev_bundle, tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(dev_bundle, bundle_dir)  # promote rewrites the manifest: a private copy
    settings = service_settings(pg_url, redis_url, s3_endpoint, bundle_dir)
    api = make_api(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log", beat=False).start()
    try:
        image = api.upload(face_jpeg())
        before = _edit(api, image["id"])
        assert before["status"] == "succeeded", (before["error"], worker.log()[-3000:])
        assert "encoder_run" not in before["model"]

        run = fake_run(tmp_path / "run", Bundle.load(bundle_dir), best=2)
        record = runs.promote(run, bundle_dir, "best")

        after = _edit(api, image["id"])
        assert after["status"] == "succeeded", (after["error"], worker.log()[-3000:])
        assert worker.process.poll() is None  # the same worker process, never restarted
        assert after["model"]["encoder"] == record["sha256"][:12] != before["model"]["encoder"]
        assert after["model"]["encoder_run"] == "run-abc123"
        assert after["model"]["generator"] == before["model"]["generator"]
        assert after["metrics"]["inversion_cached"] is False  # the new encoder has its own cache key
        assert "model bundle changed" in worker.log()
    finally:
        worker.stop()
        drop_queues(settings)
