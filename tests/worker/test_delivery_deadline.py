"""H3: a slow webhook receiver must not hold a worker. Each attempt has a wall-clock deadline (a receiver that
trickles a byte every 0.2 s is cut at it), its lease outlasts the deadline (the sweep never sends the message
again while the attempt runs), and deliveries have their own queue (the reaper, the sweep and retention stay
on `io`)."""

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from common import netguard, topology
from common.models import Edit, Image, WebhookDelivery, new_id, utcnow
from common.queue import celery_config
from common.settings import Settings
from common.webhooks import outbox
from tests.services.webhook_receiver import Receiver
from worker.deliveries import LEASE_MARGIN_S, DeliveryConfig, attempt

pytestmark = [pytest.mark.trust, pytest.mark.services]

DEADLINE_S = 1.5
CONFIG = DeliveryConfig(
    policy=netguard.NetPolicy.from_strings(["127.0.0.0/8"], ports="1024-65535", deadline_s=DEADLINE_S),
    max_attempts=5, retry_base_s=30.0, retry_max_s=60.0,
)


@pytest.fixture(scope="module")
def factory(module_pg_url):
    engine = create_engine(module_pg_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def _delivery(factory, url: str) -> str:
    owner = new_id("own")
    with factory() as s:
        image = Image(id=new_id("img"), owner=owner, format="jpeg", width=64, height=64, bytes=1, sha256="0" * 64)
        now = utcnow()
        edit = Edit(id=new_id("edt"), owner=owner, image_id=image.id, changes=[{"neutral": "a face", "target": "a smiling face", "weight": 1.0}],
                    alphas=[1.0], beta=0.1, mode="global", output_format="jpeg", webhook=url,
                    webhook_events_filter=["completed"], status="failed", error_code="no_face", attempt=1,
                    deadline_at=now + timedelta(hours=1), started_at=now, completed_at=now)
        s.add(image)
        s.flush()
        s.add(edit)
        s.commit()
        (delivery_id,) = outbox.record_events(s, edit)
    return delivery_id


def test_a_trickling_receiver_is_cut_at_the_deadline_and_gets_one_message(factory):
    """The sweep runs every 0.25 s beside the attempt, as the beat does: nothing is sent twice."""
    with Receiver(trickle_s=0.2) as rx:  # ~40 bytes of status line and headers: 8 s if nothing cuts it
        delivery_id = _delivery(factory, rx.url)
        took: list[float] = []

        def one_attempt() -> None:
            started = time.monotonic()
            attempt(factory, CONFIG, delivery_id)
            took.append(time.monotonic() - started)

        worker = threading.Thread(target=one_attempt)
        worker.start()
        sweeps = 0
        while worker.is_alive() and sweeps < 60:  # 15 s at most
            with factory() as s:
                for due in outbox.due_deliveries(s, utcnow()):
                    if due == delivery_id:
                        attempt(factory, CONFIG, due)
            sweeps += 1
            worker.join(0.25)
        worker.join(10)
        assert took and took[0] < DEADLINE_S + 1.0, f"the attempt took {took} s, deadline {DEADLINE_S} s"
        assert len(rx.requests) == 1
    with factory() as s:
        row = s.get(WebhookDelivery, delivery_id)
    assert row.status == "pending" and row.attempts == 1 and row.lease_until is None
    assert row.log[0]["error"].startswith("timeout") and row.log[0]["duration_ms"] < (DEADLINE_S + 1.0) * 1000


def test_the_lease_outlasts_the_deadline(factory):
    with Receiver(trickle_s=0.2) as rx:
        delivery_id = _delivery(factory, rx.url)
        worker = threading.Thread(target=attempt, args=(factory, CONFIG, delivery_id))
        worker.start()
        time.sleep(0.5)
        with factory() as s:
            lease_until = s.get(WebhookDelivery, delivery_id).lease_until
        worker.join(10)
    assert lease_until - utcnow() > timedelta(seconds=DEADLINE_S + LEASE_MARGIN_S - 5)


def test_deliveries_have_their_own_queue():
    settings = Settings(io_queue="io-x", edits_queue="edits-x", webhooks_queue="webhooks-x", redis_url="redis://x")
    routes = celery_config(settings)["task_routes"]
    assert routes[topology.DELIVER_WEBHOOK.name] == {"queue": "webhooks-x"}
    for task in (topology.REAP, topology.SWEEP_WEBHOOKS, topology.EXPIRE_OLD_DATA):
        assert routes[task.name] == {"queue": "io-x"}
    assert routes[topology.PROCESS_EDIT.name] == {"queue": "edits-x"}
    assert Settings().webhooks_queue == "webhooks"
