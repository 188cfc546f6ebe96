"""`Idempotency-Key` for POST requests (draft-ietf-httpapi-idempotency-key-header semantics).

A flaky phone connection retries a POST without knowing whether the first one landed. With the same
key and the same request the client gets the first response again (no second job); the same key
with a different request is a client bug (422); a retry while the first request still runs gets 409.

Keys are scoped to the caller (a hash of its API key) and kept `ttl` (24 h by default). Only
successful (2xx) responses are remembered: an error, a 429 or a 5xx releases the key, so a retry
re-executes. A record left `in_flight` by an API process that died is taken over after `lock`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.models import IdempotencyRecord, utcnow

MAX_KEY_LENGTH = IdempotencyRecord.__table__.c.key.type.length  # 255, the column's width
DEFAULT_TTL = timedelta(hours=24)
DEFAULT_LOCK = timedelta(minutes=5)


class Outcome(enum.Enum):
    PROCEED = "proceed"  # the caller holds the key: run the request, then complete() or release()
    REPLAY = "replay"  # send the stored response
    IN_FLIGHT = "in_flight"  # 409
    MISMATCH = "mismatch"  # 422


@dataclass(frozen=True)
class Begin:
    outcome: Outcome
    status: int | None = None
    headers: dict[str, str] | None = None
    body: bytes | None = None


class InvalidKey(ValueError):
    pass


def parse_key(header: str) -> str:
    """The key from the header: a Structured-Field string (`"abc"`) or a bare token, printable ASCII."""
    value = header.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not 1 <= len(value) <= MAX_KEY_LENGTH:
        raise InvalidKey(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    if any(not 0x20 <= ord(c) < 0x7F for c in value):
        raise InvalidKey("Idempotency-Key must be printable ASCII")
    return value


def fingerprint(method: str, path: str, query: str, content_type: str, body: bytes) -> str:
    """A hash of what makes two requests "the same". A multipart boundary is random per attempt, so
    it is removed from both the content type and the body before hashing."""
    media, _, params = content_type.partition(";")
    boundary = ""
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if boundary:
        body = body.replace(boundary.encode(), b"")
    h = hashlib.sha256()
    for part in (method.upper(), path, query, media.strip().lower()):
        h.update(part.encode() + b"\0")
    h.update(body)
    return h.hexdigest()


def begin(
    session: Session, scope: str, key: str, fp: str, ttl: timedelta = DEFAULT_TTL, lock: timedelta = DEFAULT_LOCK
) -> Begin:
    """Claim `key` for this request or say what to answer instead. Commits."""
    now = utcnow()
    # An expired key is as good as absent.
    session.execute(delete(IdempotencyRecord).where(
        IdempotencyRecord.scope == scope, IdempotencyRecord.key == key, IdempotencyRecord.expires_at <= now))
    try:
        with session.begin_nested():
            session.execute(insert(IdempotencyRecord).values(
                scope=scope, key=key, fingerprint=fp, state="in_flight", created_at=now,
                locked_until=now + lock, expires_at=now + ttl))
        session.commit()
        return Begin(Outcome.PROCEED)
    except IntegrityError:
        session.rollback()
    record = session.scalar(select(IdempotencyRecord).where(
        IdempotencyRecord.scope == scope, IdempotencyRecord.key == key))
    if record is None:  # released between our insert and our read: the retry is ours to run
        return begin(session, scope, key, fp, ttl, lock)
    if record.fingerprint != fp:
        return Begin(Outcome.MISMATCH)
    if record.state == "done":
        return Begin(Outcome.REPLAY, record.response_status, dict(record.response_headers or {}),
                     record.response_body or b"")
    taken = session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.scope == scope, IdempotencyRecord.key == key,
               IdempotencyRecord.state == "in_flight", IdempotencyRecord.locked_until < now)
        .values(locked_until=now + lock),
        execution_options={"synchronize_session": False},
    ).rowcount
    session.commit()
    return Begin(Outcome.PROCEED if taken else Outcome.IN_FLIGHT)


def complete(session: Session, scope: str, key: str, status: int, headers: dict[str, str], body: bytes) -> None:
    """Remember the response of the request that held `key`."""
    session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.scope == scope, IdempotencyRecord.key == key)
        .values(state="done", response_status=status, response_headers=headers, response_body=body),
        execution_options={"synchronize_session": False},
    )
    session.commit()


def release(session: Session, scope: str, key: str) -> None:
    """Forget `key` (the request failed): a retry will run again."""
    session.execute(delete(IdempotencyRecord).where(
        IdempotencyRecord.scope == scope, IdempotencyRecord.key == key, IdempotencyRecord.state == "in_flight"))
    session.commit()


def purge_expired(session: Session, now: datetime | None = None) -> int:
    """Delete expired keys (the retention task calls this); returns how many."""
    result = session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= (now or utcnow())))
    session.commit()
    return result.rowcount or 0
