"""The job queue contract shared by the API (which only sends) and the worker (which runs).

Celery carries nothing but an edit id, sent with `task_id = edit id`; the SQL row holds the rest.
Settings follow the serving notes: late ack, one message per worker at a time, visibility
timeout longer than any job, no result backend (the row is the result).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from common import topology
from common.settings import Settings


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
        "task_routes": topology.task_routes(settings),  # every task of common/topology.py to its queue
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_schedule": topology.beat_schedule(settings),
        # a model worker's pool: solo, or one thread per job it runs at once (its command line names none)
        **topology.model_worker_config(settings),
    }


def make_celery(settings: Settings, name: str = "faceedit") -> Celery:
    """A configured Celery app (no connection is made until something is sent)."""
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def enqueue_edit(app: Celery, settings: Settings, edit_id: str) -> None:
    """Send the edit job; `task_id` is the edit id so duplicates are recognisable everywhere."""
    task = topology.PROCESS_EDIT
    app.send_task(task.name, args=[edit_id], task_id=edit_id, queue=task.queue(settings))
