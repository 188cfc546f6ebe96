"""Webhook bookkeeping shared by the API and the worker: per-owner signing secrets, one delivery row
per (edit, event), and the scan that finds events nobody recorded yet.

Events are derived from the edit row itself (`started_at` set → `start`; `succeeded` → `output`;
terminal → `completed`), and the unique (edit, event) constraint makes recording idempotent. So the
worker (and the API's cancel) record and send events right away (`push_events`), and a periodic sweep records
whatever was missed (a reaper timeout, a broker that refused the send, a worker killed between its commit and
its send)
without ever producing a second delivery. Delivery itself is `worker.webhooks`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from common import webhooks
from common.models import Base, Edit, new_id, utcnow

log = logging.getLogger("webhooks")

DELIVER_TASK = "worker.webhooks.deliver"
SWEEP_TASK = "worker.webhooks.sweep"
TERMINAL = ("succeeded", "failed", "canceled")
PENDING, DELIVERED, FAILED, DISABLED, REFUSED = "pending", "delivered", "failed", "disabled", "refused"


class WebhookSecret(Base):
    """The `whsec_` secret an owner's webhooks are signed with (shown by `GET /v1/webhooks/secret`)."""

    __tablename__ = "webhook_secrets"

    owner: Mapped[str] = mapped_column(String(100), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event of one edit to one URL; its id is the `webhook-id` header (stable across retries)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    edit_id: Mapped[str] = mapped_column(ForeignKey("edits.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    event: Mapped[str] = mapped_column(String(20))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # the exact bytes every attempt signs and sends
    status: Mapped[str] = mapped_column(String(20), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    log: Mapped[list[Any]] = mapped_column(default=list)  # [{at, status_code, error, duration_ms}]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        UniqueConstraint("edit_id", "event", name="uq_webhook_deliveries_edit_event"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )


def secret_for(session: Session, owner: str) -> str:
    """The owner's signing secret, created on first use (race-safe)."""
    row = session.get(WebhookSecret, owner)
    if row is not None:
        return row.secret
    try:
        with session.begin_nested():
            session.add(WebhookSecret(owner=owner, secret=webhooks.generate_secret()))
        session.commit()
    except IntegrityError:
        session.rollback()
    return session.get(WebhookSecret, owner, populate_existing=True).secret


def due_events(edit: Edit) -> list[str]:
    """The events the edit's current state has produced, in order, limited by its filter."""
    if not edit.webhook:
        return []
    happened = []
    if edit.started_at is not None:
        happened.append("start")
    if edit.status == "succeeded":
        happened.append("output")
    if edit.status in TERMINAL:
        happened.append("completed")
    wanted = webhooks.normalize_filter(
        [e for e in edit.webhook_events_filter if e in webhooks.EVENTS]
        if edit.webhook_events_filter is not None else None
    )
    return [e for e in happened if e in wanted]


def edit_payload(edit: Edit, api_base: str = "") -> dict[str, Any]:
    """The edit as the webhook's `data`: links, not image bytes (results need the API key to fetch)."""
    base = api_base.rstrip("/")
    get = f"{base}/v1/edits/{edit.id}"
    output = None
    if edit.status == "succeeded" and edit.output_keys:
        output = [f"{get}/outputs/{i}" for i in range(len(edit.output_keys))]
    error = {"code": edit.error_code, "message": edit.error_message or ""} if edit.error_code else None
    return {
        "id": edit.id,
        "status": edit.status,
        "input": {"image": edit.image_id, "neutral": edit.neutral, "target": edit.target,
                  "alphas": edit.alphas, "beta": edit.beta, "mode": edit.mode,
                  "output_format": edit.output_format},
        "output": output,
        "error": error,
        "metrics": edit.metrics or {},
        "created_at": edit.created_at,
        "started_at": edit.started_at,
        "completed_at": edit.completed_at,
        "urls": {"get": get, "cancel": f"{get}/cancel"},
    }


def record_events(session: Session, edit: Edit, api_base: str = "", now: datetime | None = None) -> list[str]:
    """Insert a pending delivery for each due event not recorded yet; returns the new ids. Commits."""
    now = now or utcnow()
    created = []
    for event in due_events(edit):
        delivery = WebhookDelivery(
            id=new_id("msg"), edit_id=edit.id, owner=edit.owner, event=event, url=edit.webhook,
            payload=webhooks.payload(event, edit_payload(edit, api_base), now=now), status=PENDING,
            next_attempt_at=now, log=[],
        )
        try:
            with session.begin_nested():
                session.add(delivery)
            created.append(delivery.id)
        except IntegrityError:
            pass  # already recorded: recording is idempotent
    session.commit()
    return created


def unrecorded_edits(session: Session, since: timedelta, limit: int = 200) -> list[Edit]:
    """Recent edits with a webhook whose state may have produced events without delivery rows."""
    recorded = select(WebhookDelivery.edit_id).where(WebhookDelivery.event == "completed")
    rows = session.scalars(
        select(Edit)
        .where(Edit.webhook.is_not(None), Edit.started_at.is_not(None) | Edit.status.in_(TERMINAL),
               Edit.created_at >= utcnow() - since, Edit.id.not_in(recorded))
        .order_by(Edit.created_at.desc())
        .limit(limit)
    )
    return list(rows)


def due_deliveries(session: Session, now: datetime, limit: int = 200) -> list[str]:
    """Pending deliveries whose next attempt is due and that no worker holds."""
    return list(session.scalars(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now,
               (WebhookDelivery.lease_until.is_(None)) | (WebhookDelivery.lease_until < now))
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ))


def push_events(session: Session, celery_app, edit_id: str, api_base: str, queue: str) -> list[str]:
    """Record the edit's due events and send their deliveries now, right after its state changed: the sweep
    (every `webhook_sweep_seconds`) would find them too, but later. The unique (edit, event) row keeps it to one
    delivery either way. Never raises: an edit's outcome does not depend on its webhook, and what fails here
    the sweep picks up. Returns the ids sent."""
    try:
        edit = session.get(Edit, edit_id, populate_existing=True)
        if edit is None or not edit.webhook:
            return []
        created = record_events(session, edit, api_base)
        dispatch(celery_app, created, queue)
        return created
    except Exception:  # any failure here: the sweep is the fallback
        session.rollback()
        log.warning("webhook events of %s left to the sweep", edit_id, exc_info=True)
        return []


def dispatch(celery_app, delivery_ids: list[str], queue: str) -> None:
    """Send one delivery task per id to the `io` queue (never the GPU queue)."""
    for delivery_id in delivery_ids:
        celery_app.send_task(DELIVER_TASK, args=[delivery_id], queue=queue)
