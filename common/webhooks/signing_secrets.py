"""An account's webhook signing secrets: created on first use, rotated on request, the previous one kept
signing for a grace period (Standard Webhooks sends one `v1,` signature per valid secret, space-separated,
so a receiver verifies with either while it switches over)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.models import WebhookSecret, utcnow
from common.webhooks.signing import generate_secret

log = logging.getLogger("webhooks")


@dataclass(frozen=True)
class SecretState:
    """What `GET /v1/webhooks/secret` shows: the current secret and, during a grace period, when the
    previous one stops signing (the previous secret itself is never shown again)."""

    key: str
    created_at: datetime
    previous_expires_at: datetime | None


def _row(session: Session, owner: str) -> WebhookSecret:
    """The owner's row, created with a fresh secret on first use (race-safe: the owner is the key)."""
    row = session.get(WebhookSecret, owner, populate_existing=True)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            session.add(WebhookSecret(owner=owner, secret=generate_secret(), created_at=utcnow()))
        session.commit()
    except IntegrityError:
        session.rollback()
    return session.get(WebhookSecret, owner, populate_existing=True)


def _state(row: WebhookSecret, now: datetime) -> SecretState:
    in_grace = row.previous_secret is not None and row.previous_expires_at is not None and row.previous_expires_at > now
    return SecretState(row.secret, row.created_at, row.previous_expires_at if in_grace else None)


def current(session: Session, owner: str, now: datetime | None = None) -> SecretState:
    """The owner's secret (created on first use) and the end of the previous one's grace, if running."""
    return _state(_row(session, owner), now or utcnow())


def signing_secrets(session: Session, owner: str, now: datetime | None = None) -> list[str]:
    """The secrets a delivery is signed with now: the current one, plus the previous one during its grace."""
    row = _row(session, owner)
    keys = [row.secret]
    if _state(row, now or utcnow()).previous_expires_at is not None:
        keys.append(row.previous_secret)
    return keys


def rotate(session: Session, owner: str, grace: timedelta, now: datetime | None = None) -> SecretState:
    """Replace the owner's secret; the replaced one keeps signing for `grace` (a rotation during a grace
    period ends the older secret's grace at once: two secrets at most). Commits."""
    now = now or utcnow()
    while True:
        old = _row(session, owner).secret
        # Compare-and-swap on the secret: two concurrent rotations are two rotations, never a lost one.
        swapped = session.execute(
            update(WebhookSecret)
            .where(WebhookSecret.owner == owner, WebhookSecret.secret == old)
            .values(secret=generate_secret(), created_at=now, previous_secret=old,
                    previous_expires_at=now + grace if grace > timedelta(0) else None),
            execution_options={"synchronize_session": False},
        ).rowcount
        session.commit()
        if swapped:
            state = _state(_row(session, owner), now)
            log.info("webhook secret of %s rotated; the previous one signs until %s", owner, state.previous_expires_at)
            return state
