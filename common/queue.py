"""The job queue contract shared by the API (which only sends) and the worker (which runs).

Celery carries nothing but an edit id, sent with `task_id = edit id`; the SQL row holds the rest.
Settings follow the serving notes: late ack, one message per worker at a time, visibility
timeout longer than any job, no result backend (the row is the result).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from common.retention import EXPIRE_TASK
from common.settings import Settings
from common.webhooks.outbox import DELIVER_TASK, SWEEP_TASK

EDIT_TASK = "worker.tasks.process_edit"
REAP_TASK = "worker.reaper.reap"


def broker_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (`python -m api dev` starts an embedded Redis for you)")
    return settings.redis_url


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": broker_url(settings),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_seconds},
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        # A worker killed mid-job (OOM, SIGKILL of a prefork child) hands the message back; the
        # row's attempt counter stops a poison job from looping (common.lifecycle.claim).
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        "task_default_queue": settings.io_queue,
        "task_routes": {
            EDIT_TASK: {"queue": settings.edits_queue},
            # Deliveries wait on other people's servers: their own queue, so a slow receiver never holds up
            # the reaper, the sweep or retention (each attempt is bounded by WEBHOOK_TIMEOUT_SECONDS anyway).
            DELIVER_TASK: {"queue": settings.webhooks_queue},
            **{task: {"queue": settings.io_queue} for task in (REAP_TASK, SWEEP_TASK, EXPIRE_TASK)},
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_schedule": {
            # `expires`: a reap that waited longer than one interval is dropped, not piled up.
            "reap": {
                "task": REAP_TASK,
                "schedule": settings.reaper_interval_seconds,
                "options": {"expires": settings.reaper_interval_seconds},
            },
            # Webhook retries that are due and events nobody recorded (worker/deliveries.py).
            "webhooks": {
                "task": SWEEP_TASK,
                "schedule": settings.webhook_sweep_seconds,
                "options": {"expires": settings.webhook_sweep_seconds},
            },
            # Data past RETENTION_HOURS leaves the database and the storage (worker/retention.py).
            "retention": {
                "task": EXPIRE_TASK,
                "schedule": settings.retention_interval_seconds,
                "options": {"expires": settings.retention_interval_seconds},
            },
        },
    }


def make_celery(settings: Settings, name: str = "faceedit") -> Celery:
    """A configured Celery app (no connection is made until something is sent)."""
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def enqueue_edit(app: Celery, settings: Settings, edit_id: str) -> None:
    """Send the edit job; `task_id` is the edit id so duplicates are recognisable everywhere."""
    app.send_task(EDIT_TASK, args=[edit_id], task_id=edit_id, queue=settings.edits_queue)
