"""Webhook delivery against a real receiver on loopback and real PostgreSQL: signatures the reference
verifier accepts, retries with backoff, 410, SSRF at send time, redirects, sweep, no double sends.

H3: a slow receiver must not hold a worker. Each attempt has a wall-clock deadline (a receiver that trickles
a byte every 0.2 s is cut at it), its lease outlasts the deadline (the sweep never sends the message again
while the attempt runs), and deliveries have their own queue (the reaper, the sweep and retention stay on
`io`)."""

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker
from standardwebhooks.webhooks import Webhook

from common import netguard, topology
from common.models import Edit, Image, WebhookDelivery, new_id, utcnow
from common.queue import celery_config
from common.settings import Settings
from common.topology import DELIVER_WEBHOOK
from common.webhooks import outbox
from common.webhooks.signing_secrets import current
from tests.services.webhook_receiver import Receiver
from worker.deliveries import (
    LEASE_MARGIN_S,
    DeliveryConfig,
    attempt,
    backoff_seconds,
    retry_after_seconds,
    sweep_once,
)

pytestmark = [pytest.mark.trust, pytest.mark.services]

LOOPBACK = netguard.NetPolicy.from_strings(["127.0.0.0/8"], ports="1024-65535", deadline_s=3)
CONFIG = DeliveryConfig(policy=LOOPBACK, max_attempts=3, retry_base_s=0.0, retry_max_s=0.0)


@pytest.fixture(scope="module")
def factory(module_pg_url):
    engine = create_engine(module_pg_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def _edit(factory, url, status="succeeded", events=None, owner=None):
    owner = owner or new_id("own")
    with factory() as s:
        image = Image(id=new_id("img"), owner=owner, format="jpeg", width=64, height=64, bytes=1, sha256="0" * 64)
        now = utcnow()
        edit = Edit(id=new_id("edt"), owner=owner, image_id=image.id, changes=[{"neutral": "a face", "target": "a smiling face", "weight": 1.0}],
                    alphas=[1.0], beta=0.1, mode="global", output_format="jpeg", webhook=url,
                    webhook_events_filter=events, status=status, attempt=1, deadline_at=now + timedelta(hours=1),
                    started_at=now, completed_at=now if status != "processing" else None,
                    output_keys=["results/x/0.jpeg"] if status == "succeeded" else None)
        s.add(image)
        s.flush()
        s.add(edit)
        s.commit()
        return edit


def _record(factory, edit):
    with factory() as s:
        return outbox.record_events(s, s.get(Edit, edit.id))


def _row(factory, delivery_id):
    with factory() as s:
        return s.get(WebhookDelivery, delivery_id)


def test_delivered_signed_and_verifiable_with_reference_library(factory):
    with Receiver() as rx:
        edit = _edit(factory, rx.url, events=["completed"])
        (delivery_id,) = _record(factory, edit)
        assert attempt(factory, CONFIG, delivery_id) is None
    row = _row(factory, delivery_id)
    assert row.status == "delivered" and row.attempts == 1 and row.log[0]["status_code"] == 200
    (got,) = rx.requests
    with factory() as s:
        secret = current(s, edit.owner).key
    message = Webhook(secret).verify(got.body, got.headers)
    assert message["type"] == "edit.completed" and message["data"]["id"] == edit.id
    assert got.headers["webhook-id"] == delivery_id


def test_filter_and_event_order(factory):
    edit = _edit(factory, "http://127.0.0.1:9/x")
    ids = _record(factory, edit)
    with factory() as s:
        events = [s.get(WebhookDelivery, i).event for i in ids]
    assert events == ["start", "output", "completed"]
    assert _record(factory, edit) == []  # recording twice adds nothing
    failed = _edit(factory, "http://127.0.0.1:9/x", status="failed", events=["output", "completed"])
    with factory() as s:
        assert [s.get(WebhookDelivery, i).event for i in _record(factory, failed)] == ["completed"]


def test_receiver_errors_then_success_retries_with_same_id_fresh_signature(factory):
    with Receiver(statuses=[503, 500]) as rx:
        edit = _edit(factory, rx.url, events=["completed"])
        (delivery_id,) = _record(factory, edit)
        assert attempt(factory, CONFIG, delivery_id) is not None
        assert attempt(factory, CONFIG, delivery_id) is not None
        assert attempt(factory, CONFIG, delivery_id) is None
    row = _row(factory, delivery_id)
    assert row.status == "delivered" and [e["status_code"] for e in row.log] == [503, 500, 200]
    assert {r.headers["webhook-id"] for r in rx.requests} == {delivery_id}
    assert len({r.body for r in rx.requests}) == 1


def test_receiver_down_exhausts_attempts_then_failed(factory):
    with Receiver() as rx:
        url = rx.url
    edit = _edit(factory, url, events=["completed"])  # nobody listens on that port any more
    (delivery_id,) = _record(factory, edit)
    for _ in range(3):
        attempt(factory, CONFIG, delivery_id)
    row = _row(factory, delivery_id)
    assert row.status == "failed" and row.attempts == 3 and row.log[-1]["error"].startswith("connection: ")


def test_gone_disables_the_endpoint(factory):
    owner = new_id("own")
    with Receiver(statuses=[410]) as rx:
        first, second = (_edit(factory, rx.url, events=["completed"], owner=owner) for _ in range(2))
        (a,) = _record(factory, first)
        (b,) = _record(factory, second)
        attempt(factory, CONFIG, a)
        assert attempt(factory, CONFIG, b) is None
    assert _row(factory, a).status == "disabled" and _row(factory, b).status == "disabled"
    assert len(rx.requests) == 1


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/h",
                                 "http://[::ffff:127.0.0.1]:9/h", "http://localhost.:9/h"])
def test_ssrf_refused_at_send_time(factory, url):
    policy = netguard.NetPolicy()  # nothing allowlisted
    edit = _edit(factory, url, events=["completed"])
    (delivery_id,) = _record(factory, edit)
    attempt(factory, DeliveryConfig(policy=policy), delivery_id)
    row = _row(factory, delivery_id)
    assert row.status == "refused" and row.log[0]["error"].startswith("url_forbidden_address")


def test_redirect_is_a_failed_attempt(factory):
    with Receiver() as elsewhere, Receiver(redirect_to="placeholder") as rx:
        rx.redirect_to = elsewhere.url
        edit = _edit(factory, rx.url, events=["completed"])
        (delivery_id,) = _record(factory, edit)
        assert attempt(factory, CONFIG, delivery_id) is not None
        assert elsewhere.requests == []
    assert "redirect" in _row(factory, delivery_id).log[0]["error"]


def test_concurrent_copies_of_a_message_send_once(factory):
    with Receiver() as rx:
        edit = _edit(factory, rx.url, events=["completed"])
        (delivery_id,) = _record(factory, edit)
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda _: attempt(factory, CONFIG, delivery_id), range(6)))
    assert len(rx.requests) == 1


def test_sweep_records_missed_events_and_returns_due(factory):
    edit = _edit(factory, "http://127.0.0.1:9/x", status="canceled")
    due = sweep_once(factory, CONFIG, since=timedelta(hours=1))
    with factory() as s:
        rows = s.scalars(select(WebhookDelivery).where(WebhookDelivery.edit_id == edit.id)).all()
    assert sorted(r.event for r in rows) == ["completed", "start"]
    assert {r.id for r in rows} <= set(due)


def test_backoff_grows_exponentially_with_jitter():
    rng = random.Random(0)
    delays = [backoff_seconds(n, 5, 86400, rng) for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        full = min(86400, 5 * 4 ** (n - 1))
        assert full / 2 <= d <= full
    assert backoff_seconds(30, 5, 100, rng) <= 100


def test_push_records_and_sends_the_events_at_once(factory, redis_url):
    """What the worker and the API's cancel call right after a state change: the deliveries are recorded and
    their tasks are on the webhooks queue now (not at the next sweep), once."""
    queue = f"webhooks-push-{new_id('q')}"
    app = Celery(broker=redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        edit = _edit(factory, "http://127.0.0.1:9/hook")  # succeeded: start, output and completed are due
        with factory() as s:
            sent = outbox.push_events(s, app, edit.id, "", queue)
        assert [_row(factory, i).event for i in sent] == ["start", "output", "completed"]
        messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
        assert sorted(m["headers"]["task"] for m in messages) == [DELIVER_WEBHOOK.name] * 3
        assert sorted(m["headers"]["argsrepr"] for m in messages) == sorted(repr([i]) for i in sent)
        with factory() as s:  # recorded already: nothing new is sent
            assert outbox.push_events(s, app, edit.id, "", queue) == []
            quiet = _edit(factory, None)
            assert outbox.push_events(s, app, quiet.id, "", queue) == []
        assert client.llen(queue) == 3
    finally:
        client.delete(queue)
        client.close()


@pytest.mark.parametrize("value", ["²", "¹²", "1e3", "-5", "soon", "Wed, 99 Foo 2026 07:28:00 GMT"])
def test_a_malformed_retry_after_is_ignored_not_a_crash(factory, value):
    """`isdigit()` accepted "²", then float() raised a bare ValueError inside the task with the lease held."""
    with Receiver(statuses=[503], headers={"Retry-After": value}) as rx:
        edit = _edit(factory, rx.url, events=["completed"])
        (delivery_id,) = _record(factory, edit)
        assert attempt(factory, CONFIG, delivery_id) == 0.0  # the backoff alone (base 0 here)
    row = _row(factory, delivery_id)
    assert row.status == "pending" and row.lease_until is None and row.log[0]["status_code"] == 503


def test_retry_after_in_seconds_or_as_a_date():
    now = utcnow()
    assert retry_after_seconds("120", now) == 120.0
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 88 <= retry_after_seconds(later, now) <= 90
    assert retry_after_seconds("Thu, 01 Jan 2015 00:00:00 GMT", now) == 0.0
    assert retry_after_seconds(None, now) == retry_after_seconds("", now) == 0.0


def test_retry_after_is_honoured(factory):
    with Receiver(statuses=[429], headers={"Retry-After": "42"}) as rx:
        edit = _edit(factory, rx.url, events=["completed"])
        (delivery_id,) = _record(factory, edit)
        assert attempt(factory, DeliveryConfig(policy=LOOPBACK, retry_base_s=0.0, retry_max_s=3600), delivery_id) == 42


def test_a_host_that_does_not_resolve_now_is_retried_not_refused(factory):
    """Submission accepts a host whose DNS is down for a moment; the send does not give up on it either."""
    edit = _edit(factory, "http://does-not-exist.invalid/hook", events=["completed"])
    (delivery_id,) = _record(factory, edit)
    assert attempt(factory, CONFIG, delivery_id) is not None
    row = _row(factory, delivery_id)
    assert row.status == "pending" and row.log[0]["error"].startswith("url_unresolvable")


# --- H3: the deadline of an attempt ------------------------------------------------------------------

DEADLINE_S = 1.5
DEADLINE_CONFIG = DeliveryConfig(  # retries far off: one attempt per test
    policy=netguard.NetPolicy.from_strings(["127.0.0.0/8"], ports="1024-65535", deadline_s=DEADLINE_S),
    max_attempts=5, retry_base_s=30.0, retry_max_s=60.0,
)


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
            attempt(factory, DEADLINE_CONFIG, delivery_id)
            took.append(time.monotonic() - started)

        worker = threading.Thread(target=one_attempt)
        worker.start()
        sweeps = 0
        while worker.is_alive() and sweeps < 60:  # 15 s at most
            with factory() as s:
                for due in outbox.due_deliveries(s, utcnow()):
                    if due == delivery_id:
                        attempt(factory, DEADLINE_CONFIG, due)
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
        worker = threading.Thread(target=attempt, args=(factory, DEADLINE_CONFIG, delivery_id))
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
