"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: DB, broker, storage reachable)."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep, StorageDep
from api.schemas import Health
from common.redis_client import redis_client
from common.settings import Settings
from common.storage import Storage

router = APIRouter(tags=["health"])


def _check_broker(settings: Settings) -> None:
    client = redis_client(settings.redis_url or "")
    try:
        client.ping()
    finally:
        client.close()


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


def dependency_checks(session: Session, storage: Storage, settings: Settings) -> dict[str, str]:
    """`ok` or `error: <type>` for each dependency the service cannot work without (also read by /metrics)."""
    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as error:
        checks["database"] = f"error: {type(error).__name__}"
    try:
        _check_broker(settings)
        checks["broker"] = "ok"
    except (RedisError, OSError) as error:
        checks["broker"] = f"error: {type(error).__name__}"
    try:
        storage.check()
        checks["storage"] = "ok"
    except (OSError, BotoCoreError, ClientError) as error:
        checks["storage"] = f"error: {type(error).__name__}"
    return checks


@router.get("/readyz", response_model=Health, responses={503: {"description": "a dependency is unreachable"}})
def readyz(session: SessionDep, storage: StorageDep, settings: SettingsDep):
    checks = dependency_checks(session, storage, settings)
    failing = sorted(name for name, state in checks.items() if state != "ok")
    if failing:
        body = {"code": "not_ready", "message": f"unreachable: {', '.join(failing)}", "checks": checks}
        return JSONResponse(body, status_code=503)
    return Health(status="ready", checks=checks)
