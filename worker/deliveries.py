"""Webhook delivery, on its own Celery queue (WEBHOOKS_QUEUE; never a model worker, and apart from the reaper
and retention on `io`): sign, POST through the SSRF guard within a wall-clock deadline, log every attempt,
retry with exponential backoff and jitter, stop on 410.

`deliver(id)` makes one attempt; short retries are re-sent with a countdown, and `sweep()` (beat, on `io`)
re-dispatches anything due that a lost message or a restart left behind, and records events the edit rows
show but nobody recorded (common.webhooks.outbox). A conditional UPDATE (the lease) makes sure two copies of
the same message never deliver the same attempt twice; the lease outlasts the attempt's deadline, so the
sweep never re-sends a message whose attempt is still running.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from celery import shared_task
from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, sessionmaker

from common import netguard, tracing
from common.header_integer import header_integer
from common.metrics import WEBHOOK_ATTEMPTS
from common.models import WebhookDelivery, utcnow
from common.topology import DELIVER_WEBHOOK, SWEEP_WEBHOOKS
from common.webhooks import outbox
from common.webhooks.outbox import DeliveryStatus
from common.webhooks.signing import signed_headers
from common.webhooks.signing_secrets import signing_secrets
from common.webhooks.urls import webhook_policy

log = logging.getLogger(__name__)

USER_AGENT = "faceedit-webhooks/1"
MAX_LOG_ENTRIES = 25
# Retries sooner than this are re-sent with a Celery countdown; later ones wait for the sweep
# (long ETAs on Redis collide with the visibility timeout).
INLINE_RETRY_MAX_S = 60.0
# The lease is the attempt's deadline plus this: room for the database writes around the POST. Only a worker
# that died mid-attempt lets a lease run out, and only then does the sweep send the message again.
LEASE_MARGIN_S = 60.0


@dataclass(frozen=True)
class DeliveryConfig:
    policy: netguard.NetPolicy
    max_attempts: int = 10
    retry_base_s: float = 5.0
    retry_max_s: float = 24 * 3600.0
    api_base: str = ""

    @classmethod
    def from_settings(cls, settings) -> DeliveryConfig:
        return cls(
            policy=webhook_policy(settings),
            max_attempts=settings.webhook_max_attempts,
            retry_base_s=settings.webhook_retry_base_seconds,
            retry_max_s=settings.webhook_retry_max_seconds,
            api_base=settings.public_base_url,
        )

    @property
    def lease_s(self) -> float:
        return self.policy.deadline_s + LEASE_MARGIN_S


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before attempt `attempt + 1`: base·4^(attempt-1), capped, with jitter in [½, 1]×."""
    delay = min(cap, base * 4 ** max(0, attempt - 1))
    return (rng or random).uniform(delay / 2, delay)


def retry_after_seconds(value: str | None, now: datetime) -> float:
    """`Retry-After` as seconds: ASCII digits or an HTTP date (RFC 9110); 0 for anything else."""
    seconds = header_integer(value)
    if seconds is not None:
        return float(seconds)
    value = (value or "").strip()
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when.tzinfo is None:  # "-0000" dates: UTC by RFC 5322
        return 0.0
    return max(0.0, (when - now).total_seconds())


def _claim(session: Session, delivery_id: str, now: datetime, lease_s: float) -> WebhookDelivery | None:
    claimed = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.PENDING,
               WebhookDelivery.next_attempt_at <= now,
               WebhookDelivery.lease_until.is_(None) | (WebhookDelivery.lease_until < now))
        .values(lease_until=now + timedelta(seconds=lease_s), attempts=WebhookDelivery.attempts + 1),
        execution_options={"synchronize_session": False},
    ).rowcount
    session.commit()
    return session.get(WebhookDelivery, delivery_id, populate_existing=True) if claimed else None


def _finish(session: Session, delivery: WebhookDelivery, status: str, entry: dict, **values) -> None:
    session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery.id).values(
            status=status, lease_until=None, log=(list(delivery.log or []) + [entry])[-MAX_LOG_ENTRIES:],
            last_status_code=entry.get("status_code"), last_error=entry.get("error"), **values),
        execution_options={"synchronize_session": False},
    )
    session.commit()
    WEBHOOK_ATTEMPTS.labels(outcome="retrying" if status == DeliveryStatus.PENDING else status).inc()


def attempt(factory: sessionmaker[Session], config: DeliveryConfig, delivery_id: str,
            rng: random.Random | None = None) -> float | None:
    """Make one delivery attempt if it is due and free. Returns seconds until the retry, or None."""
    with factory() as session:
        now = utcnow()
        delivery = _claim(session, delivery_id, now, config.lease_s)
        if delivery is None:
            return None
        entry: dict = {"attempt": delivery.attempts, "at": now.isoformat(), "status_code": None, "error": None}
        gone = session.scalar(select(exists().where(
            WebhookDelivery.owner == delivery.owner, WebhookDelivery.url == delivery.url,
            WebhookDelivery.status == DeliveryStatus.DISABLED)))
        if gone:
            _finish(session, delivery, DeliveryStatus.DISABLED,
                    {**entry, "error": "endpoint answered 410 Gone earlier"})
            return None
        headers = signed_headers(signing_secrets(session, delivery.owner), delivery.id, delivery.payload)
        headers["User-Agent"] = USER_AGENT
        started = time.monotonic()
        answer = None
        try:  # the SSRF check resolves the host again now (DNS answers change), inside the deadline
            with tracing.webhook_post(delivery.url) as span:
                answer = netguard.resolve_and_post(delivery.url, delivery.payload, headers, config.policy)
                tracing.answered(span, answer.status_code)
            entry["status_code"] = answer.status_code
        except netguard.UnsafeURL as e:
            if e.code != "url_unresolvable":
                _finish(session, delivery, DeliveryStatus.REFUSED, {**entry, "error": f"{e.code}: {e.message}"})
                return None
            entry["error"] = f"{e.code}: {e.message}"  # DNS may be down for a moment: retried like a timeout
        except netguard.SendError as e:
            entry["error"] = str(e)
        entry["duration_ms"] = round((time.monotonic() - started) * 1000)
        code = entry["status_code"]
        if code is not None and 200 <= code < 300:
            _finish(session, delivery, DeliveryStatus.DELIVERED, entry, delivered_at=utcnow())
            return None
        if code == 410:
            _finish(session, delivery, DeliveryStatus.DISABLED, {**entry, "error": "410 Gone: endpoint disabled"})
            _disable_endpoint(session, delivery)
            return None
        if code is not None and 300 <= code < 400:
            entry["error"] = "redirects are not followed"
        if delivery.attempts >= config.max_attempts:
            _finish(session, delivery, DeliveryStatus.FAILED, entry)
            return None
        asked = retry_after_seconds(answer.headers.get("retry-after") if answer else None, utcnow())
        delay = max(backoff_seconds(delivery.attempts, config.retry_base_s, config.retry_max_s, rng),
                    min(asked, config.retry_max_s))
        _finish(session, delivery, DeliveryStatus.PENDING, {**entry, "retry_in_s": round(delay, 3)},
                next_attempt_at=utcnow() + timedelta(seconds=delay))
        return delay


def _disable_endpoint(session: Session, delivery: WebhookDelivery) -> None:
    """410 from an endpoint: its other pending deliveries for this owner stop too."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.owner == delivery.owner, WebhookDelivery.url == delivery.url,
               WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.id != delivery.id)
        .values(status=DeliveryStatus.DISABLED, last_error="endpoint answered 410 Gone to another delivery"),
        execution_options={"synchronize_session": False},
    )
    session.commit()


def sweep_once(factory: sessionmaker[Session], config: DeliveryConfig, since: timedelta) -> list[str]:
    """Record missed events, then return the ids of deliveries due now."""
    with factory() as session:
        for edit in outbox.unrecorded_edits(session, since):
            outbox.record_events(session, edit, config.api_base)
        return outbox.due_deliveries(session, utcnow())


@cache
def _context():
    """Settings, sessions and config of this worker process (built on first use, not at import)."""
    from common.db import make_engine, make_session_factory
    from common.settings import get_settings

    settings = get_settings()
    return settings, make_session_factory(make_engine(settings.database_url)), DeliveryConfig.from_settings(settings)


@shared_task(name=DELIVER_WEBHOOK.name, bind=True, ignore_result=True)
def deliver(self, delivery_id: str) -> None:
    settings, factory, config = _context()
    delay = attempt(factory, config, delivery_id)
    if delay is not None and delay <= INLINE_RETRY_MAX_S:
        self.app.send_task(DELIVER_WEBHOOK.name, args=[delivery_id], countdown=delay, queue=settings.webhooks_queue)


@shared_task(name=SWEEP_WEBHOOKS.name, bind=True, ignore_result=True)
def sweep(self) -> None:
    settings, factory, config = _context()
    due = sweep_once(factory, config, since=timedelta(hours=settings.retention_hours))
    outbox.dispatch(self.app, due, settings.webhooks_queue)
