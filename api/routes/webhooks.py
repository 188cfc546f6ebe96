"""Webhooks seen from the API: the account's signing secret, its rotation, and the delivery log of an edit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import OwnerDep, SessionDep, SettingsDep
from api.routes.edits import load_edit
from api.schemas import ErrorBody
from common.models import WebhookDelivery
from common.webhooks import signing_secrets
from common.webhooks.outbox import DeliveryStatus

router = APIRouter(tags=["webhooks"])
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 429)}


class WebhookSecretOut(BaseModel):
    key: str = Field(description="`whsec_...`: verify `webhook-signature` with it (see docs/SECURITY.md)")
    created_at: datetime = Field(description="when this secret was created (first use or last rotation)")
    previous_expires_at: datetime | None = Field(
        description="after a rotation: until then each message also carries a signature made with the previous "
        "secret (one `v1,` signature per secret in `webhook-signature`); null when no previous secret signs"
    )


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
    output_index: int | None = Field(
        None, description="for an `output` event: which output (index into `alphas`) it announced")
    url: str
    status: DeliveryStatus = Field(
        description="pending | delivered | failed | disabled (410) | refused (SSRF guard)")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    log: list[DeliveryAttempt]


class DeliveryList(BaseModel):
    results: list[DeliveryOut]


def _secret_out(state: signing_secrets.SecretState) -> WebhookSecretOut:
    return WebhookSecretOut(key=state.key, created_at=state.created_at,
                            previous_expires_at=state.previous_expires_at)


@router.get("/v1/webhooks/secret", response_model=WebhookSecretOut, responses=_ERRORS)
def get_webhook_secret(owner: OwnerDep, session: SessionDep) -> WebhookSecretOut:
    """The secret this account's webhooks are signed with (Standard Webhooks, HMAC-SHA256)."""
    return _secret_out(signing_secrets.current(session, owner))


@router.post("/v1/webhooks/secret/rotate", response_model=WebhookSecretOut, responses=_ERRORS)
def rotate_webhook_secret(owner: OwnerDep, session: SessionDep, settings: SettingsDep) -> WebhookSecretOut:
    """Replace the signing secret. The previous one keeps signing beside it for WEBHOOK_SECRET_GRACE_HOURS
    (`previous_expires_at`), so receivers can switch without dropping a message. Send an `Idempotency-Key`:
    a retried request then answers the same new secret instead of rotating twice."""
    grace = timedelta(hours=settings.webhook_secret_grace_hours)
    return _secret_out(signing_secrets.rotate(session, owner, grace))


def _out(row: WebhookDelivery) -> DeliveryOut:
    log: list[dict[str, Any]] = row.log or []
    return DeliveryOut(
        id=row.id, event=row.event, output_index=row.output_index if row.event in ("preview", "output") else None, url=row.url, status=row.status, attempts=row.attempts,
        last_status_code=row.last_status_code, last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if row.status == DeliveryStatus.PENDING else None,
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
