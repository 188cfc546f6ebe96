"""A worker SIGKILLed in the middle of a job: the job still ends exactly once.

The killed worker never acks, never writes again; its lease runs out, the reaper (beat in the
second worker) puts the row back to `starting` and re-sends it, the second worker claims it
(attempt 2) and writes the results under the same keys.
"""

from __future__ import annotations

import pytest

from tests.conftest import WorkerProcess, drop_queues, face_jpeg, fresh_database, make_api, service_settings

pytestmark = pytest.mark.services


@pytest.fixture
def own_database():
    # Its own database: the session worker's reaper would otherwise requeue this test's job onto the
    # session's queue (one database = one deployment).
    with fresh_database() as url:
        yield url


def test_killed_worker_job_finishes_exactly_once(own_database, redis_url, s3_endpoint, dev_bundle, tmp_path):
    settings = service_settings(
        own_database, redis_url, s3_endpoint, dev_bundle, lease_seconds=3.0, heartbeat_seconds=0.5
    )
    api = make_api(settings)
    first = WorkerProcess(settings, tmp_path / "first.log").start()
    second = WorkerProcess(settings, tmp_path / "second.log")
    try:
        image = api.upload(face_jpeg(scale=6))
        alphas = [-3, -2, -1, 0, 1, 2, 3, 4]
        edit = api.post("/v1/edits", json={"image": image["id"], "neutral": "a face", "target": "a smiling face",
                                           "alphas": alphas, "beta": 0.15}).json()  # fmt: skip
        running = api.wait(edit["id"], until=("processing", "succeeded", "failed", "canceled"))
        assert running["status"] == "processing", running
        first.kill()
        assert api.get(f"/v1/edits/{edit['id']}").json()["status"] == "processing"

        second.start()
        final = api.wait(edit["id"], timeout=300)
        assert final["status"] == "succeeded", (final, second.log()[-3000:])
        assert final["metrics"]["attempt"] == 2
        assert len(final["output"]) == len(alphas)
        assert len(api.client.app.state.storage.list(f"results/{edit['id']}/")) == len(alphas)
        assert "reaper" in second.log()  # the requeue was the reaper's doing
    finally:
        first.kill()
        second.stop()
        drop_queues(settings)
