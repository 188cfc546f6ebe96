"""Celery tasks of the model workers: an edit job (the message carries only the edit id, = the task id) and
the face detection of a new photo (the image id)."""

from __future__ import annotations

import logging

from common.logging import log_context
from common.metrics import JOBS_IN_PROGRESS, record_gpu_memory
from common.topology import DETECT_FACES, PROCESS_EDIT
from worker.app import app
from worker.detection import run_detection
from worker.edit_job import run_edit
from worker.runtime import get_runtime

log = logging.getLogger("worker")


@app.task(name=PROCESS_EDIT.name, acks_late=True, ignore_result=True)
def process_edit(edit_id: str) -> str:
    """Run the edit if its row is still claimable; a duplicate or redelivered message is a no-op."""
    with log_context(edit_id=edit_id), JOBS_IN_PROGRESS.track_inprogress():
        try:
            outcome = run_edit(get_runtime(), edit_id)
            log.info("edit job done: %s", outcome)
            return outcome
        finally:
            record_gpu_memory()


@app.task(name=DETECT_FACES.name, acks_late=True, ignore_result=True)
def detect_faces(image_id: str) -> str:
    """Detect the photo's faces once and store them on its row (worker.detection)."""
    with log_context(image_id=image_id):
        outcome = run_detection(get_runtime(), image_id)
        log.info("face detection done: %s", outcome)
        return outcome
