"""The workers' Celery app with one bug planted right after the claim, for tests/worker/test_fail_fast.py:
``celery -A tests.worker.buggy_app worker ...``. The job's progress watcher cannot be built (a TypeError, as a
programming error raises); everything else is `worker.app` as deployed."""

from __future__ import annotations

from worker import edit_job
from worker.app import app


class _BrokenWatcher:
    def __init__(self, *args, **kwargs):
        raise TypeError("planted bug: the progress watcher cannot be built")


edit_job.Watcher = _BrokenWatcher  # type: ignore[misc, assignment]

__all__ = ["app"]
