"""The reaper (run by beat every REAPER_INTERVAL_SECONDS on the `io` queue).

* Edits past their deadline fail with `timeout`; a worker still running one notices at its next
  cancel check and discards its outputs.
* `processing` edits whose lease expired (their worker was killed or hangs) go back to `starting`
  and are sent again; after MAX_ATTEMPTS claims they fail with `worker_lost` instead of looping.
* `starting` edits whose message is no longer in the broker (a Redis restarted without persistence,
  a claim that failed while PostgreSQL was down) are sent again. A duplicate message is harmless:
  the claim lets only one run hold the row.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import select

from common import lifecycle
from common.lifecycle import EditStatus
from common.models import Edit, utcnow
from common.queue import enqueue_edit
from common.redis_client import redis_client
from common.topology import REAP
from worker.app import app
from worker.runtime import Runtime, get_runtime

log = logging.getLogger("worker.reaper")

# A row is committed just before its message is sent: younger `starting` rows are left alone.
RESEND_GRACE = timedelta(seconds=10)


def queued_task_ids(redis_url: str, queue: str) -> set[str]:
    """Task ids waiting in the Redis list of `queue` or reserved by a worker (kombu's `unacked`)."""
    client = redis_client(redis_url, timeout=5)
    try:
        ids = {json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)}
        ids |= {json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")}
        return ids
    finally:
        client.close()


def resend_orphans(runtime: Runtime, celery: Celery) -> int:
    """Send again the `starting` edits no message stands for any more; returns how many."""
    settings = runtime.settings
    with runtime.session_factory() as session:
        waiting = set(session.scalars(select(Edit.id).where(
            Edit.status == EditStatus.STARTING, Edit.created_at < utcnow() - RESEND_GRACE).limit(500)))
    if not waiting:
        return 0
    orphans = waiting - queued_task_ids(settings.redis_url, settings.edits_queue)
    for edit_id in orphans:
        enqueue_edit(celery, settings, edit_id)
    return len(orphans)


def reap_once(runtime: Runtime, celery: Celery) -> dict[str, int]:
    settings = runtime.settings
    counts = {"timed_out": 0, "requeued": 0, "gave_up": 0, "resent": 0}
    with runtime.session_factory() as session:
        counts["timed_out"] = lifecycle.expire_overdue(session)
        for edit_id in lifecycle.lost_edit_ids(session):
            if lifecycle.requeue_if_lost(session, edit_id, settings.max_attempts):
                enqueue_edit(celery, settings, edit_id)
                counts["requeued"] += 1
            elif lifecycle.fail_exhausted(session, edit_id, settings.max_attempts):
                counts["gave_up"] += 1
    counts["resent"] = resend_orphans(runtime, celery)
    if any(counts.values()):
        log.warning("reaper: %s", counts)
    return counts


@app.task(name=REAP.name, ignore_result=True)
def reap() -> dict[str, int]:
    return reap_once(get_runtime(), app)
