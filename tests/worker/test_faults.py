"""Faults on purpose, against the real service: a worker SIGKILLed mid-job 20 times, Redis and
PostgreSQL restarted under a stream of submissions, a webhook receiver that is down. Closing counts:
jobs lost (accepted but never succeeded) and jobs duplicated (more than one result set or more than
one `completed` webhook message for one edit)."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from common.models import Edit, WebhookDelivery
from tests.conftest import face_jpeg, fresh_database
from tests.services.attack_counts import count
from tests.services.deployment import running_deployment
from tests.services.provision import PrivatePostgres, PrivateRedis
from tests.services.settings import fault_settings
from tests.services.webhook_receiver import Receiver

pytestmark = [pytest.mark.trust, pytest.mark.services]

KILLS = int(os.environ.get("FAULT_KILLS", "20"))


def _completed_messages(receiver: Receiver) -> Counter:
    """edit id → number of distinct `completed` messages (webhook-id) the receiver got."""
    seen: dict[str, set[str]] = {}
    for request in receiver.requests:
        message = json.loads(request.body)
        if message["type"] == "edit.completed":
            seen.setdefault(message["data"]["id"], set()).add(request.headers["webhook-id"])
    return Counter({edit_id: len(ids) for edit_id, ids in seen.items()})


def _tally(stack, receiver: Receiver, timeout: float) -> tuple[list[str], list[str]]:
    """Wait for every accepted edit; returns (lost, duplicated) edit ids and adds them to the counts."""
    rows = stack.wait_terminal(stack.accepted, timeout)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(_completed_messages(receiver)) < len(stack.accepted):
        time.sleep(0.25)  # the last webhooks may still be on their way
    messages = _completed_messages(receiver)
    lost = [i for i in stack.accepted if rows[i].status != "succeeded"]
    duplicated = [i for i in stack.accepted
                  if messages.get(i, 0) > 1 or (rows[i].status == "succeeded"
                                                and len(stack.result_objects(i)) != len(rows[i].alphas))]
    count("jobs checked", len(stack.accepted))
    count("jobs lost", len(lost))
    count("jobs duplicated", len(duplicated))
    return lost, duplicated


def _describe(stack, ids: list[str]) -> str:
    rows = stack.rows(ids)
    return "; ".join(f"{i}: {rows[i].status} {rows[i].error_code} attempt={rows[i].attempt}" for i in ids[:10])


@pytest.fixture(scope="module")
def stack(redis_url, dev_bundle, tmp_path_factory):
    """A deployment of its own: its own database too, or the session worker's reaper and sweep (same
    database, other queues and storage) would pick up these edits."""
    base = tmp_path_factory.mktemp("faults")
    with fresh_database() as database_url:
        settings = fault_settings(database_url, redis_url, base / "storage", dev_bundle)
        with running_deployment(settings, base) as s:
            yield s


def test_sigkill_worker_mid_job(stack):
    rng = random.Random(7)
    with Receiver() as receiver:
        image_id = stack.upload(face_jpeg())["id"]
        first = len(stack.accepted)
        kills: Counter[str] = Counter()
        deadline = time.monotonic() + 240
        while sum(kills.values()) < KILLS and time.monotonic() < deadline:
            mine = stack.accepted[first:]
            rows = stack.rows(mine)
            if sum(r.status in ("starting", "processing") for r in rows.values()) < 3:
                stack.submit(image_id, webhook=receiver.url, webhook_events_filter=["completed"])
                continue
            running = [r for r in rows.values() if r.status == "processing" and r.worker and kills[r.id] < 2]
            if not running:
                time.sleep(0.05)
                continue
            target = running[0]
            time.sleep(rng.uniform(0.0, 0.6))  # somewhere in the middle of the job
            with stack.factory() as s:
                now = s.scalar(select(Edit.worker).where(Edit.id == target.id, Edit.status == "processing"))
            if now != target.worker:
                continue  # finished (or reaped) meanwhile
            pid = int(target.worker.split(":")[-2])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills[target.id] += 1
            count("worker kills")
        assert sum(kills.values()) == KILLS, f"only {sum(kills.values())} kills in time:\n{stack.worker.log()[-2000:]}"
        stack.accepted[:] = stack.accepted[first:]
        lost, duplicated = _tally(stack, receiver, timeout=180)
    assert not lost, _describe(stack, lost)
    assert not duplicated, _describe(stack, duplicated)
    assert max(r.attempt for r in stack.rows(list(kills)).values()) >= 2  # the kills really interrupted jobs


def test_webhook_receiver_down_then_up_is_delivered(stack):
    with Receiver() as probe:
        url = probe.url  # a port nobody listens on once this receiver is closed
    port = int(url.split(":")[2].split("/")[0])
    image_id = stack.upload(face_jpeg())["id"]
    stack.accepted.clear()
    edit_id = stack.submit(image_id, webhook=url, webhook_events_filter=["completed"]).json()["id"]
    stack.wait_terminal([edit_id], timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # at least two failed attempts while nobody listens
        with stack.factory() as s:
            row = s.scalar(select(WebhookDelivery).where(WebhookDelivery.edit_id == edit_id))
        if row is not None and row.attempts >= 2:
            break
        time.sleep(0.2)
    receiver = Receiver(port=port)
    with receiver:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not receiver.requests:
            time.sleep(0.2)
    log = stack.client.get(f"/v1/edits/{edit_id}/webhooks", headers=stack.headers).json()["results"]
    assert len(log) == 1 and log[0]["status"] == "delivered", log
    codes = [a["status_code"] for a in log[0]["log"]]
    assert codes[-1] == 200 and None in codes[:-1], log  # connection failures first, then delivered
    assert len(receiver.requests) == 1


def test_redis_and_postgres_restarts_under_a_stream_of_submissions(dev_bundle, tmp_path):
    postgres = PrivatePostgres().start()  # no server binaries: fails, naming how to get them
    redis_server = PrivateRedis().start()
    try:
        settings = fault_settings(postgres.url, redis_server.url, tmp_path / "storage", dev_bundle)
        with running_deployment(settings, tmp_path) as stack, Receiver() as receiver:
            image_id = stack.upload(face_jpeg())["id"]
            refused: Counter[int] = Counter()
            stop = threading.Event()

            def stream() -> None:
                while not stop.is_set():
                    r = stack.submit(image_id, webhook=receiver.url, webhook_events_filter=["completed"])
                    if r.status_code != 201:
                        refused[r.status_code] += 1
                    time.sleep(0.7)

            thread = threading.Thread(target=stream, daemon=True)
            thread.start()
            time.sleep(6)
            redis_server.restart(down_s=2)
            time.sleep(6)
            postgres.restart(down_s=2)
            time.sleep(6)
            stop.set()
            thread.join(timeout=60)
            lost, duplicated = _tally(stack, receiver, timeout=180)
            print(f"accepted {len(stack.accepted)}, refused during outages {dict(refused)}")
            assert len(stack.accepted) >= 10
            assert not lost, _describe(stack, lost) + "\n" + stack.worker.log()[-3000:]
            assert not duplicated, _describe(stack, duplicated)
    finally:
        redis_server.close()
        postgres.close()
