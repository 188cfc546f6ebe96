"""A job sends its own webhook events the moment its state changes, instead of leaving them to the sweep."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

from PIL import Image as PILImage
from redis import Redis
from sqlalchemy import select

from common.db import upgrade
from common.models import Edit, Image, WebhookDelivery, new_id, utcnow
from common.settings import Settings
from common.storage_layout import original_key
from common.topology import DELIVER_WEBHOOK
from common.webhooks.outbox import DeliveryStatus
from tests.conftest import face_jpeg
from worker.edit_job import run_edit
from worker.runtime import Runtime


def test_a_finished_job_has_queued_its_start_output_and_completed_deliveries(dev_bundle, redis_url, tmp_path):
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(database)
    tag = uuid.uuid4().hex[:8]
    runtime = Runtime(Settings(database_url=database, storage_dir=tmp_path / "store", model_dir=dev_bundle,
                               redis_url=redis_url, io_queue=f"io-{tag}", edits_queue=f"edits-{tag}",
                               webhooks_queue=f"webhooks-{tag}"))
    photo = face_jpeg()
    image = Image(id=new_id("img"), owner="alice", format="jpeg", width=1, height=1, bytes=len(photo), sha256="0" * 64)
    runtime.storage.put(original_key(image.id), photo, "image/jpeg")
    edit = Edit(id=new_id("edt"), owner="alice", image_id=image.id, changes=[{"neutral": "a face", "target": "a smiling face", "weight": 1.0}],
                alphas=[1.0], beta=0.15, mode="global", output_format="jpeg", webhook="https://hooks.example/edits",
                status="starting", attempt=0, deadline_at=utcnow() + timedelta(minutes=10))
    with runtime.session_factory() as session:
        session.add(image)
        session.flush()
        session.add(edit)
        session.commit()
    broker = Redis.from_url(redis_url)
    try:
        assert run_edit(runtime, edit.id) == "succeeded"
        with runtime.session_factory() as session:
            rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.edit_id == edit.id)).all()
        assert sorted(r.event for r in rows) == ["completed", "output", "start"]
        assert {r.status for r in rows} == {DeliveryStatus.PENDING} and {r.url for r in rows} == {edit.webhook}
        queued = broker.lrange(f"webhooks-{tag}", 0, -1)  # their own queue: never `io`, never a model worker's
        assert len(queued) == 3 and all(DELIVER_WEBHOOK.name.encode() in message for message in queued)
        assert broker.llen(f"io-{tag}") == 0
    finally:
        broker.delete(f"io-{tag}", f"webhooks-{tag}")
        broker.close()


def test_a_preview_is_stored_announced_to_who_asked_then_replaced(dev_bundle, redis_url, tmp_path):
    """A CPU worker stores the first strength's preview and names it on the row; a subscriber that listed
    `preview` gets its event, whose resource shows it (the output it stands in for still null); the full-size
    output clears it from the row and deletes the object, so the finished edit shows none and stores none."""
    import json

    from common.storage_layout import preview_key

    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(database)
    tag = uuid.uuid4().hex[:8]
    runtime = Runtime(Settings(database_url=database, storage_dir=tmp_path / "store", model_dir=dev_bundle,
                               redis_url=redis_url, io_queue=f"io-{tag}", edits_queue=f"edits-{tag}",
                               webhooks_queue=f"webhooks-{tag}", default_inversion="e4e"))
    photo = face_jpeg()
    image = Image(id=new_id("img"), owner="alice", format="jpeg", width=1, height=1, bytes=len(photo), sha256="0" * 64)
    runtime.storage.put(original_key(image.id), photo, "image/jpeg")
    edits = {name: Edit(id=new_id("edt"), owner="alice", image_id=image.id,
                        changes=[{"neutral": "a face", "target": "a smiling face", "weight": 1.0}],
                        alphas=[-1.0, 0.0, 1.0], beta=0.15, mode="global", output_format="png",
                        webhook="https://hooks.example/edits", webhook_events_filter=events, status="starting",
                        attempt=0, deadline_at=utcnow() + timedelta(minutes=10))
             for name, events in (("asked", ["preview", "completed"]), ("default", None))}
    with runtime.session_factory() as session:
        session.add(image)
        session.flush()
        session.add_all(edits.values())
        session.commit()
    try:
        for edit in edits.values():
            assert run_edit(runtime, edit.id) == "succeeded"
        with runtime.session_factory() as session:
            asked = session.scalars(select(WebhookDelivery).where(WebhookDelivery.edit_id == edits["asked"].id)).all()
            default = session.scalars(select(WebhookDelivery).where(
                WebhookDelivery.edit_id == edits["default"].id)).all()
            finished = session.get(Edit, edits["asked"].id)
            assert finished.preview is None and finished.metrics["first_preview_seconds"] > 0
        assert sorted(r.event for r in asked) == ["completed", "preview"]
        assert sorted(r.event for r in default) == ["completed", "output", "output", "output", "start"]
        event = json.loads(next(r for r in asked if r.event == "preview").payload)
        assert event["type"] == "edit.preview" and next(r for r in asked if r.event == "preview").output_index == 1
        shown = event["data"]["preview"]
        assert shown["index"] == 1 and shown["url"].endswith(f"/v1/edits/{edits['asked'].id}/preview")
        assert (shown["width"], shown["height"]) == PILImage.open(io.BytesIO(photo)).size  # under 1024: as is
        assert event["data"]["output"] in (None, [None, None, None])
        completed = json.loads(next(r for r in asked if r.event == "completed").payload)["data"]
        assert completed["preview"] is None and all(completed["output"])
        for edit in edits.values():  # the outputs stay, the preview went
            assert sorted(runtime.storage.list(f"results/{edit.id}/")) == [f"results/{edit.id}/{i}.png" for i in range(3)]
            assert preview_key(edit.id) not in runtime.storage.list(f"results/{edit.id}/")
    finally:
        broker = Redis.from_url(redis_url)
        broker.delete(f"io-{tag}", f"webhooks-{tag}")
        broker.close()
