"""The webhook outbox: one delivery row per (edit, event, output index), recorded idempotently, sent on the
webhooks queue (one `output` per finished output, so the index; 0 for `start` and `completed`).

The unique (edit, event, output index) constraint makes recording idempotent. So the worker (and the API's cancel) record
and send an edit's events right after its state changes (`push_events`), and a periodic sweep (on `io`)
records whatever was missed (a reaper timeout, a broker that refused the send, a worker killed between its
commit and its send) without ever producing a second message. Sending is `worker.deliveries`.
"""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.lifecycle import TERMINAL
from common.models import Edit, WebhookDelivery, new_id, utcnow
from common.topology import DELIVER_WEBHOOK
from common.webhooks.events import due_events, event_payload

log = logging.getLogger("webhooks")


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # every attempt used up
    DISABLED = "disabled"  # the endpoint answered 410 Gone (to this or another message of the owner)
    REFUSED = "refused"  # the SSRF guard refused the URL at send time


def record_events(session: Session, edit: Edit, api_base: str = "", now: datetime | None = None) -> list[str]:
    """Insert a pending delivery for each due event not recorded yet; returns the new ids. Commits."""
    now = now or utcnow()
    created = []
    for event, index in due_events(edit):
        delivery = WebhookDelivery(
            id=new_id("msg"), edit_id=edit.id, owner=edit.owner, event=event, output_index=index, url=edit.webhook,
            payload=event_payload(event, edit, api_base, now=now), status=DeliveryStatus.PENDING,
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
        .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now,
               (WebhookDelivery.lease_until.is_(None)) | (WebhookDelivery.lease_until < now))
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ))


def push_events(session: Session, celery_app, edit_id: str, api_base: str, queue: str) -> list[str]:
    """Record the edit's due events and send their deliveries to `queue` (WEBHOOKS_QUEUE) now, right after
    its state changed: the sweep (every `webhook_sweep_seconds`) would find them too, but later. The unique
    (edit, event, output index) row keeps it to one delivery either way. Never raises: an edit's outcome does not depend on
    its webhook, and what fails here the sweep picks up. Returns the ids sent."""
    try:
        edit = session.get(Edit, edit_id, populate_existing=True)
        if edit is None or not edit.webhook:
            return []
        created = record_events(session, edit, api_base)
        dispatch(celery_app, created, queue)
        return created
    except Exception:  # any failure here: the sweep is the fallback (logged with its trace)
        session.rollback()
        log.warning("webhook events of %s left to the sweep", edit_id, exc_info=True)
        return []


def dispatch(celery_app, delivery_ids: list[str], queue: str) -> None:
    """Send one delivery task per id to `queue`: the webhooks queue, never a model worker's."""
    for delivery_id in delivery_ids:
        celery_app.send_task(DELIVER_WEBHOOK.name, args=[delivery_id], queue=queue)
