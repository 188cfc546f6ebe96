"""Typed FastAPI dependencies: settings, a DB session per request, storage, the queue, the caller."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.keys import owner_for_key
from common.errors import ApiError
from common.settings import Settings
from common.storage import Storage

DEV_OWNER = "dev"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


def _bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            "unauthorized",
            "send `Authorization: Bearer <api key>` (create one with `python -m api keys create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


def get_owner(request: Request, session: SessionDep, settings: SettingsDep) -> str:
    """The owner of the presented key; every image and edit is scoped to it."""
    token = _bearer_token(request)
    if settings.dev_api_key and hmac.compare_digest(token.encode(), settings.dev_api_key.encode()):
        return DEV_OWNER
    owner = owner_for_key(session, token)
    if owner is None:
        raise ApiError("unauthorized", "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return owner


OwnerDep = Annotated[str, Depends(get_owner)]
