"""Caps on unfinished edits: the guard on the lifecycle's first step (a new row in `starting`).

At most `per_owner` unfinished (`starting` or `processing`) edits per account and `total` for everyone, so one
account cannot fill the queue and a flood cannot grow it without bound (docs/SECURITY.md). `admit` is the only
way a new edit enters the queue: it counts and inserts under one lock, so concurrent submits cannot all count
the same free slot: a transaction-scoped advisory lock on PostgreSQL (every API replica shares it; the commit
or rollback releases it), a process lock elsewhere (SQLite serves one development process).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.errors import ApiError
from common.lifecycle import ACTIVE
from common.models import Edit
from common.settings import Settings

# "faceedit" as a bigint: the key of the PostgreSQL advisory lock that submits take
SUBMIT_LOCK_KEY = int.from_bytes(b"faceedit", "big") & (2**63 - 1)
_submit_lock = threading.Lock()


@dataclass(frozen=True)
class QueueCaps:
    """At most `per_owner` unfinished edits per owner and `total` overall; a refusal says retry in
    `retry_after_s` seconds."""

    per_owner: int
    total: int
    retry_after_s: int = 5

    def __post_init__(self) -> None:
        if not (self.per_owner >= 1 and self.total >= 1 and self.retry_after_s >= 1):
            raise ValueError("queue caps and retry_after_s must be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueCaps:
        return cls(per_owner=settings.max_queued_per_owner, total=settings.max_queued_total)


def admit(session: Session, edit: Edit, caps: QueueCaps) -> None:
    """Insert the new `edit` (status `starting`) and commit, or raise 429 `queue_full` with `Retry-After` when
    its owner, or everyone together, already has as many unfinished edits as the caps allow."""
    with _serialized(session):
        refusal = _refusal(session, edit.owner, caps)
        if refusal is not None:
            raise ApiError("queue_full", refusal, headers={"Retry-After": str(caps.retry_after_s)})
        session.add(edit)
        session.commit()  # releases the advisory lock; the row exists before a worker can receive its id


def _refusal(session: Session, owner: str, caps: QueueCaps) -> str | None:
    """Why one more edit of `owner` may not be queued, or None (one query counts both)."""
    everyone, mine = session.execute(
        select(func.count(), func.count().filter(Edit.owner == owner)).where(Edit.status.in_(ACTIVE))
    ).one()
    if mine >= caps.per_owner:
        return f"this account already has {mine} unfinished edits (at most {caps.per_owner}); wait for some to finish"
    if everyone >= caps.total:
        return "the service has too many unfinished edits right now; retry shortly"
    return None


@contextmanager
def _serialized(session: Session) -> Iterator[None]:
    """One submit at a time from counting to commit. On an error the transaction is rolled back here, which
    releases the advisory lock at once."""
    on_postgresql = session.get_bind().dialect.name == "postgresql"
    with nullcontext() if on_postgresql else _submit_lock:
        try:
            if on_postgresql:
                session.execute(select(func.pg_advisory_xact_lock(SUBMIT_LOCK_KEY)))
            yield
        except BaseException:
            session.rollback()
            raise
