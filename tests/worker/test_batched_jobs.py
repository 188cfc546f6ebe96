"""A model worker that runs several edit jobs at once (EDIT_JOBS_PER_WORKER: Celery's threads pool, their renders
batched through the Editor's batcher): two jobs waiting when it starts run side by side, and each ends with its
own outputs, progress and webhooks."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image
from sqlalchemy import select

from common.db import make_engine, make_session_factory
from common.models import Edit, WebhookDelivery
from common.storage import make_storage
from common.webhooks.outbox import DeliveryStatus
from tests.conftest import WorkerProcess, drop_queues, face_jpeg, make_api, service_settings
from tests.services.webhook_receiver import Receiver

pytestmark = pytest.mark.services

JOBS = {"smile": {"target": "a smiling face", "alphas": [-1.0, 1.0]},
        "hair": {"target": "a face with blue hair", "alphas": [0.5, 1.5, 2.5]}}


def test_a_worker_running_two_jobs_at_once_gives_each_its_own_results(fresh_pg_url, redis_url, s3_endpoint,
                                                                     dev_bundle, tmp_path):
    # a database of its own: the session worker's reaper (same database, other queues and storage) would
    # otherwise re-send these edits, queued until this worker has loaded its models, to its own queue
    settings = service_settings(fresh_pg_url, redis_url, s3_endpoint, dev_bundle, edit_jobs_per_worker=2,
                                edit_batch_wait_ms=20.0, webhook_allow_networks="127.0.0.0/8",
                                webhook_allow_ports="1024-65535")  # the loopback receiver
    api = make_api(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log", beat=False)
    try:
        with Receiver() as receiver:
            image = api.upload(face_jpeg())
            ids = {}
            for name, job in JOBS.items():  # both queued before the worker starts: it takes them together
                response = api.post("/v1/edits", json={"image": image["id"], "neutral": "a face", "beta": 0.15,
                                                       "webhook": receiver.url, **job})
                assert response.status_code == 201, response.text
                ids[name] = response.json()["id"]
            worker.start()
            done = {name: api.wait(ids[name]) for name in JOBS}
            for name, edit in done.items():
                assert edit["status"] == "succeeded", (name, edit["error"], worker.log()[-3000:])
            deliveries = _deliveries(settings, list(ids.values()), sum(len(j["alphas"]) + 2 for j in JOBS.values()))
            received = [json.loads(r.body)["data"]["id"] for r in receiver.requests]
        log = worker.log()
        assert "concurrency: 2 (thread)" in log, log[:3000]  # the pool the settings chose for this worker

        rows = _rows(settings, list(ids.values()))
        smile, hair = rows[ids["smile"]], rows[ids["hair"]]
        # side by side: each was claimed before the other finished
        assert smile.started_at < hair.completed_at and hair.started_at < smile.completed_at
        storage = make_storage(settings)
        photos: dict[str, list[bytes]] = {}
        for name, edit_id in ids.items():
            edit, row = done[name], rows[edit_id]
            assert len(edit["output"]) == len(JOBS[name]["alphas"])
            assert all(key.startswith(f"results/{edit_id}/") for key in row.output_keys)
            photos[name] = [storage.get(key) for key in row.output_keys]
            assert all(Image.open(io.BytesIO(p)).size == (image["width"], image["height"]) for p in photos[name])
            # its own webhooks, each delivered: start, one output per strength (each index once), completed
            mine = sorted((d.event, d.output_index if d.event == "output" else 0) for d in deliveries[edit_id])
            n = len(JOBS[name]["alphas"])
            assert mine == sorted([("completed", 0), ("start", 0), *(("output", i) for i in range(n))]), mine
            assert {d.status for d in deliveries[edit_id]} == {DeliveryStatus.DELIVERED}
            assert received.count(edit_id) == n + 2
        assert len({*photos["smile"], *photos["hair"]}) == 5  # every photo its own
    finally:
        worker.stop()
        drop_queues(settings)


def _rows(settings, ids: list[str]) -> dict[str, Edit]:
    factory = make_session_factory(make_engine(settings.database_url))
    with factory() as session:
        return {edit_id: session.get(Edit, edit_id) for edit_id in ids}


def _deliveries(settings, ids: list[str], expected: int, timeout: float = 60) -> dict[str, list[WebhookDelivery]]:
    """Each edit's webhook deliveries, once ``expected`` of them are delivered (or ``timeout`` passed)."""
    factory = make_session_factory(make_engine(settings.database_url))
    deadline = time.monotonic() + timeout
    while True:
        with factory() as session:
            rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.edit_id.in_(ids))).all()
        done = [r for r in rows if r.status == DeliveryStatus.DELIVERED]
        if len(done) >= expected or time.monotonic() > deadline:
            return {edit_id: [r for r in rows if r.edit_id == edit_id] for edit_id in ids}
        time.sleep(0.2)
