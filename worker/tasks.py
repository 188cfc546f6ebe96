"""Celery tasks of the model workers. The message carries only the edit id (= the task id)."""

from __future__ import annotations

import logging

from common.logging import log_context
from common.metrics import JOBS_IN_PROGRESS, record_gpu_memory
from common.queue import EDIT_TASK
from worker.app import app
from worker.edit_job import run_edit
from worker.runtime import get_runtime

log = logging.getLogger("worker")


@app.task(name=EDIT_TASK, acks_late=True, ignore_result=True)
def process_edit(edit_id: str) -> str:
    """Run the edit if its row is still claimable; a duplicate or redelivered message is a no-op."""
    with log_context(edit_id=edit_id), JOBS_IN_PROGRESS.track_inprogress():
        try:
            outcome = run_edit(get_runtime(), edit_id)
            log.info("edit job done: %s", outcome)
            return outcome
        finally:
            record_gpu_memory()
