"""Typed FastAPI dependencies: settings, a DB session per request, storage, the queue, the caller.

Every one is `async def`: FastAPI runs a plain `def` dependency in the threadpool, one thread hop per
dependency per request (seven on a submit), and none of these does I/O worth a thread. The one that may,
closing a session that still holds a connection in a transaction (its rollback is a round trip), hops
only then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, principal_of
from common.edit_sender import EditSender
from common.errors import ApiError
from common.settings import Settings
from common.storage import Storage


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for the request; it connects on first use (in the route's thread), not here."""
    session = request.app.state.session_factory()
    try:
        yield session
    finally:
        if session.in_transaction():  # a connection is held: closing rolls back over the network
            await run_in_threadpool(session.close)
        else:  # committed or never used: no connection, nothing but bookkeeping
            session.close()


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_edit_sender(request: Request) -> EditSender:
    return request.app.state.edit_sender


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
EditSenderDep = Annotated[EditSender, Depends(get_edit_sender)]


async def get_principal(request: Request) -> Principal:
    """The caller `api.auth.AuthGate` authenticated before the body was read (every /v1 route)."""
    principal = principal_of(request.scope)
    if principal is None:  # a route outside /v1 asked for an owner: the gate did not run for it
        raise ApiError("unauthorized", "this route is not behind the API key check",
                       headers={"WWW-Authenticate": "Bearer"})
    return principal


async def get_owner(principal: Annotated[Principal, Depends(get_principal)]) -> str:
    """The owner of the presented key; every image and edit is scoped to it."""
    return principal.owner


PrincipalDep = Annotated[Principal, Depends(get_principal)]
OwnerDep = Annotated[str, Depends(get_owner)]
