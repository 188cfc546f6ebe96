"""Periodic expiry (Celery beat, queue `io`): photos, edits, results and uploads older than
RETENTION_HOURS, and expired idempotency keys, leave the database and the storage. And the orphan
sweep: stored objects whose row is gone (a write that lost a race with a deletion) are deleted once
they are older than ORPHAN_GRACE_SECONDS."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import timedelta

from celery import shared_task

from common.models import utcnow
from common.retention import Purged, expire, sweep_orphans
from common.topology import EXPIRE_OLD_DATA, SWEEP_ORPHANS

log = logging.getLogger(__name__)


def run_expiry(factory, storage, retention: timedelta) -> Purged:
    """One expiry pass; what it deleted (also logged, counts only: never ids of photos or keys)."""
    with factory() as session:
        purged = expire(session, storage, utcnow() - retention)
    if any(asdict(purged).values()):
        log.info("retention: expired data", extra={"purged": asdict(purged)})
    return purged


@shared_task(name=EXPIRE_OLD_DATA.name, ignore_result=True)
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


def run_orphan_sweep(factory, storage, grace: timedelta) -> int:
    """One sweep of objects without a row; how many it deleted (logged as a count, never keys)."""
    with factory() as session:
        deleted = sweep_orphans(session, storage, utcnow() - grace)
    if deleted:
        log.warning("retention: deleted %d stored objects that no row named", deleted)
    return deleted


@shared_task(name=SWEEP_ORPHANS.name, ignore_result=True)
def sweep_orphan_objects() -> None:
    from common.db import make_engine, make_session_factory
    from common.settings import get_settings
    from common.storage import make_storage

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        run_orphan_sweep(make_session_factory(engine), make_storage(settings),
                         timedelta(seconds=settings.orphan_grace_seconds))
    finally:
        engine.dispose()
