"""End to end on PostgreSQL + Redis + S3 over HTTP with a real Celery worker and the dev bundle:
upload → edit → poll → full-size images; inversion cache; Prefer: wait; cancel while running;
redelivered messages; a photo without a face."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import face_jpeg

pytestmark = pytest.mark.services


def _edit(api, image_id: str, alphas=(-2, 0, 2), **extra) -> dict:
    body = {"image": image_id, "neutral": "a face", "target": "a smiling face", "alphas": list(alphas),
            "beta": 0.15, **extra}  # fmt: skip
    response = api.post("/v1/edits", json=body, headers=extra.pop("headers", {}))
    assert response.status_code == 201, response.text
    return response.json()


def test_edit_end_to_end_then_the_inversion_is_reused(api, worker):
    data = face_jpeg()
    image = api.upload(data)
    first = api.wait(_edit(api, image["id"])["id"])
    assert first["status"] == "succeeded", (first["error"], worker.log()[-3000:])
    assert len(first["output"]) == 3 and first["error"] is None and first["progress"] is None
    for url in first["output"]:
        result = httpx.get(url)  # presigned S3 URL
        assert result.status_code == 200 and result.headers["content-type"] == "image/jpeg"
        decoded = Image.open(io.BytesIO(result.content))
        assert decoded.size == (image["width"], image["height"])  # full size, pasted back
        assert not decoded.getexif()  # no metadata leaves the service
    metrics = first["metrics"]
    assert metrics["inversion_cached"] is False and metrics["attempt"] == 1
    for stage in ("align", "invert", "direction", "synthesize", "paste", "total", "queue"):
        assert metrics[f"{stage}_seconds"] >= 0
    assert first["model"]["dev_bundle"] is True and first["model"]["encoder"]
    assert first["started_at"] <= first["completed_at"]

    second = api.wait(_edit(api, image["id"], alphas=[1], output_format="png")["id"])
    assert second["status"] == "succeeded" and second["metrics"]["inversion_cached"] is True
    assert "align_seconds" not in second["metrics"] and "invert_seconds" not in second["metrics"]
    png = httpx.get(second["output"][0])
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")

    storage = api.client.app.state.storage
    assert len(storage.list(f"inversions/{image['id']}/")) == 1
    assert len(storage.list(f"results/{first['id']}/")) == 3

    assert api.delete(f"/v1/images/{image['id']}").status_code == 204  # photo, inversion and results go
    assert storage.list(f"inversions/{image['id']}/") == storage.list(f"results/{first['id']}/") == []
    assert storage.list(f"originals/{image['id']}") == []
    assert api.get(f"/v1/edits/{second['id']}").status_code == 404


def test_prefer_wait_returns_the_finished_edit(api, worker):
    image = api.upload(face_jpeg())
    api.wait(_edit(api, image["id"], alphas=[1])["id"])  # warm the inversion cache
    response = api.post("/v1/edits", headers={"Prefer": "wait=60"}, json={
        "image": image["id"], "neutral": "a face", "target": "a face with glasses", "alphas": [0.5],
        "beta": 0.1,
    })  # fmt: skip
    assert response.status_code == 201 and response.headers["preference-applied"] == "wait=60"
    assert response.json()["status"] == "succeeded" and len(response.json()["output"]) == 1


def test_cancel_while_running_leaves_no_outputs(api, worker):
    # A large photo and many alphas keep the paste stage busy long enough to cancel in the middle.
    image = api.upload(face_jpeg(scale=6))
    edit = _edit(api, image["id"], alphas=[-3, -2, -1, 0, 1, 2, 3, 4])
    running = api.wait(edit["id"], until=("processing", "succeeded", "failed", "canceled"))
    assert running["status"] == "processing", running
    canceled = api.post(f"/v1/edits/{edit['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    time.sleep(3)  # the worker notices within CANCEL_CHECK_SECONDS and cleans up
    final = api.get(f"/v1/edits/{edit['id']}").json()
    assert final["status"] == "canceled" and final["output"] is None
    assert api.client.app.state.storage.list(f"results/{edit['id']}/") == []
    # The worker is free again: the next edit completes.
    assert api.wait(_edit(api, image["id"], alphas=[1])["id"])["status"] == "succeeded"


def test_a_redelivered_message_changes_nothing(api, worker, settings):
    from common.queue import enqueue_edit, make_celery

    image = api.upload(face_jpeg())
    done = api.wait(_edit(api, image["id"], alphas=[1])["id"])
    assert done["status"] == "succeeded"
    enqueue_edit(make_celery(settings), settings, done["id"])  # what Redis does after a lost ack
    api.wait(_edit(api, image["id"], alphas=[2])["id"])  # the queue has drained past the duplicate
    again = api.get(f"/v1/edits/{done['id']}").json()
    assert again["completed_at"] == done["completed_at"] and again["metrics"] == done["metrics"]
    assert len(api.client.app.state.storage.list(f"results/{done['id']}/")) == 1


def test_a_photo_without_a_face_fails_with_its_code(api, worker):
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 200, 200)).save(buffer, "JPEG")
    image = api.upload(buffer.getvalue())
    failed = api.wait(_edit(api, image["id"])["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "no_face", failed
    assert failed["output"] is None and failed["error"]["message"]


def test_the_worker_publishes_what_its_bundle_offers(api, worker, settings):
    """common/worker_offers.py from a real worker: its loaded development bundle has SFE, so the fleet of its
    queue offers e4e and sfe, and the API's /app-config.json says so."""
    from redis import Redis

    from common.worker_offers import read_offers

    deadline = time.monotonic() + 60
    with Redis.from_url(settings.redis_url) as redis:
        while (offers := read_offers(redis, settings.edits_queue)) is None and time.monotonic() < deadline:
            time.sleep(0.5)
    assert offers is not None and offers.workers == 1 and offers.offered() == ["e4e", "sfe"]
    api.client.app.state.worker_offers.cache_seconds = 0
    assert api.get("/app-config.json").json()["worker_inversions"] == ["e4e", "sfe"]
