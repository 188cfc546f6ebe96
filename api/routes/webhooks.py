"""Webhooks seen from the API: the owner's signing secret and the delivery log of an edit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import OwnerDep, SessionDep
from api.routes.edits import load_edit
from api.schemas import ErrorBody
from common.deliveries import WebhookDelivery, secret_for

router = APIRouter(tags=["webhooks"])
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 429)}


class WebhookSecretOut(BaseModel):
    key: str = Field(description="`whsec_...`: verify `webhook-signature` with it (see docs/SECURITY.md)")


class DeliveryAttempt(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int | None = None
    retry_in_s: float | None = None


class DeliveryOut(BaseModel):
    id: str = Field(description="the `webhook-id` header (the same on every retry)")
    event: str
    url: str
    status: str = Field(description="pending | delivered | failed | disabled (410) | refused (SSRF guard)")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    log: list[DeliveryAttempt]


class DeliveryList(BaseModel):
    results: list[DeliveryOut]


@router.get("/v1/webhooks/secret", response_model=WebhookSecretOut, responses=_ERRORS)
def get_webhook_secret(owner: OwnerDep, session: SessionDep) -> WebhookSecretOut:
    """The secret this account's webhooks are signed with (Standard Webhooks, HMAC-SHA256)."""
    return WebhookSecretOut(key=secret_for(session, owner))


def _out(row: WebhookDelivery) -> DeliveryOut:
    log: list[dict[str, Any]] = row.log or []
    return DeliveryOut(
        id=row.id, event=row.event, url=row.url, status=row.status, attempts=row.attempts,
        last_status_code=row.last_status_code, last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        created_at=row.created_at, delivered_at=row.delivered_at,
        log=[DeliveryAttempt(**{k: v for k, v in entry.items() if k in DeliveryAttempt.model_fields})
             for entry in log],
    )


@router.get("/v1/edits/{edit_id}/webhooks", response_model=DeliveryList, responses=_ERRORS)
def list_edit_webhooks(edit_id: str, owner: OwnerDep, session: SessionDep) -> DeliveryList:
    """Every webhook message of one edit, with each delivery attempt."""
    edit = load_edit(session, owner, edit_id)
    rows = session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.edit_id == edit.id).order_by(WebhookDelivery.created_at))
    return DeliveryList(results=[_out(row) for row in rows])
