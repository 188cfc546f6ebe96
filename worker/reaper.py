"""The reaper (run by beat every REAPER_INTERVAL_SECONDS on the `io` queue).

* Edits past their deadline fail with `timeout`; a worker still running one notices at its next
  cancel check and discards its outputs.
* `processing` edits whose lease expired (their worker was killed or hangs) go back to `starting`
  and are sent again; after MAX_ATTEMPTS claims they fail with `worker_lost` instead of looping.
"""

from __future__ import annotations

import logging

from celery import Celery

from common import lifecycle
from common.queue import REAP_TASK, enqueue_edit
from worker.app import app
from worker.runtime import Runtime, get_runtime

log = logging.getLogger("worker.reaper")


def reap_once(runtime: Runtime, celery: Celery) -> dict[str, int]:
    settings = runtime.settings
    counts = {"timed_out": 0, "requeued": 0, "gave_up": 0}
    with runtime.session_factory() as session:
        counts["timed_out"] = lifecycle.expire_overdue(session)
        for edit_id in lifecycle.lost_edit_ids(session):
            if lifecycle.requeue_if_lost(session, edit_id, settings.max_attempts):
                enqueue_edit(celery, settings, edit_id)
                counts["requeued"] += 1
            elif lifecycle.fail_exhausted(session, edit_id, settings.max_attempts):
                counts["gave_up"] += 1
    if any(counts.values()):
        log.warning("reaper: %s", counts)
    return counts


@app.task(name=REAP_TASK, ignore_result=True)
def reap() -> dict[str, int]:
    return reap_once(get_runtime(), app)
