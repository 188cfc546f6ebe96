"""Typed FastAPI dependencies: settings, a DB session per request, storage, the queue, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.auth import Principal, principal_of
from common.errors import ApiError
from common.settings import Settings
from common.storage import Storage


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


def get_principal(request: Request) -> Principal:
    """The caller `api.auth.AuthGate` authenticated before the body was read (every /v1 route)."""
    principal = principal_of(request.scope)
    if principal is None:  # a route outside /v1 asked for an owner: the gate did not run for it
        raise ApiError("unauthorized", "this route is not behind the API key check",
                       headers={"WWW-Authenticate": "Bearer"})
    return principal


def get_owner(principal: Annotated[Principal, Depends(get_principal)]) -> str:
    """The owner of the presented key; every image and edit is scoped to it."""
    return principal.owner


PrincipalDep = Annotated[Principal, Depends(get_principal)]
OwnerDep = Annotated[str, Depends(get_owner)]
