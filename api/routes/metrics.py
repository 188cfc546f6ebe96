"""`GET /metrics`: the API's Prometheus metrics (request counts and latency by route and status), plus what
the API finds at each scrape: whether its dependencies answer and how long edits wait for a worker.

The scrape itself probes (as an exporter would), so the alerts in infra/monitoring see an unreachable
database or a queue nobody consumes even when no request or job is flowing to report it.
Unauthenticated like `/healthz`, for the in-cluster scraper; do not route it through a public Ingress.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep, StorageDep
from api.routes.health import dependency_checks
from common.lifecycle import EditStatus
from common.metrics import DEPENDENCY_UP, EDITS_WAITING, OLDEST_WAITING, metrics_payload
from common.models import Edit, utcnow

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def metrics(session: SessionDep, storage: StorageDep, settings: SettingsDep) -> Response:
    checks = dependency_checks(session, storage, settings)
    for dependency, state in checks.items():
        DEPENDENCY_UP.labels(dependency=dependency).set(1 if state == "ok" else 0)
    if checks["database"] == "ok":
        _record_waiting(session)
    body, content_type = metrics_payload()
    return Response(body, media_type=content_type)


def _record_waiting(session: Session) -> None:
    """Edits not yet started by a worker, and the oldest one's age (one index range: status, created_at)."""
    try:
        count, oldest = session.execute(
            select(func.count(), func.min(Edit.created_at)).where(Edit.status == EditStatus.STARTING)
        ).one()
    except SQLAlchemyError:  # gone since the check: the dependency gauge says so at the next scrape
        session.rollback()
        return
    EDITS_WAITING.set(count)
    OLDEST_WAITING.set(max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0)
