"""Periodic expiry (Celery beat, queue `io`): photos, edits, results and uploads older than
RETENTION_HOURS, and expired idempotency keys, leave the database and the storage."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import timedelta

from celery import shared_task

from common.models import utcnow
from common.retention import EXPIRE_TASK, Purged, expire

log = logging.getLogger(__name__)


def run_expiry(factory, storage, retention: timedelta) -> Purged:
    """One expiry pass; what it deleted (also logged, counts only: never ids of photos or keys)."""
    with factory() as session:
        purged = expire(session, storage, utcnow() - retention)
    if any(asdict(purged).values()):
        log.info("retention: expired data", extra={"purged": asdict(purged)})
    return purged


@shared_task(name=EXPIRE_TASK, ignore_result=True)
def expire_old_data() -> None:
    from common.db import make_engine, make_session_factory
    from common.settings import get_settings
    from common.storage import make_storage

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        run_expiry(make_session_factory(engine), make_storage(settings), timedelta(hours=settings.retention_hours))
    finally:
        engine.dispose()
