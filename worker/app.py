"""The Celery app of the workers: `celery -A worker.app worker -P solo -c 1 -Q edits,io`.

One process per accelerator (`-P solo`), one message at a time, late acknowledgement: see
`common.queue` for the settings and `common.lifecycle` for why a redelivered job is harmless.
The models load before the first job is consumed: in the main process for `-P solo`, in each child
for prefork (CUDA cannot cross a fork).
"""

from __future__ import annotations

import logging

from celery import signals

from common.queue import make_celery
from common.settings import get_settings

log = logging.getLogger("worker")

app = make_celery(get_settings(), name="faceedit-worker")
app.conf.include = ["worker.tasks", "worker.reaper", "worker.webhooks", "worker.retention"]


@signals.worker_process_init.connect
def _warm(**_) -> None:
    # Sent by the solo pool in the main process and by prefork in each child, before consuming.
    from worker.runtime import get_runtime

    get_runtime().warm()
