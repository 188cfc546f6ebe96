"""The edit state machine: every transition is one conditional UPDATE that stamps its time.

    starting → processing → succeeded | failed | canceled        starting → canceled | failed
    processing → starting   (only the reaper, when the holder's lease expired: the job is requeued)

A worker *claims* a row with a token; only the holder of the current token may record progress or
finish it, so a redelivered or duplicated Celery message can never produce a second result.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from common.edit_cost import Estimate
from common.models import Edit, utcnow


# The one definition of the statuses: the API schema, the worker, metrics and webhooks all read it from here.
class EditStatus(enum.StrEnum):
    """An edit's state: `starting` (queued) → `processing` → `succeeded` | `failed` | `canceled`."""

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({EditStatus.SUCCEEDED, EditStatus.FAILED, EditStatus.CANCELED})
ACTIVE = (EditStatus.STARTING, EditStatus.PROCESSING)

# Job error codes the service adds to the pipeline's own (see docs/API.md).
TIMEOUT = "timeout"
WORKER_LOST = "worker_lost"
INTERNAL_ERROR = "internal_error"
IMAGE_NOT_FOUND = "image_not_found"


class Claim(enum.Enum):
    CLAIMED = "claimed"  # this worker now holds the row
    SKIPPED = "skipped"  # terminal, or held by a live worker: nothing to do (ack the message)
    GAVE_UP = "gave_up"  # too many attempts or past its deadline: the row was failed


def _apply(session: Session, edit_id: str, condition, **values: Any) -> bool:
    result = session.execute(
        update(Edit).where(Edit.id == edit_id, condition).values(**values),
        execution_options={"synchronize_session": False},
    )
    session.commit()
    return result.rowcount == 1


def _claimable(now: datetime):
    expired = and_(Edit.status == EditStatus.PROCESSING, Edit.lease_expires_at < now)
    return or_(Edit.status == EditStatus.STARTING, expired)


def claim(session: Session, edit_id: str, token: str, lease_seconds: float, max_attempts: int) -> Claim:
    """Take the row for `token`, or tell why not. A lease-expired `processing` row may be re-claimed."""
    now = utcnow()
    claimed = _apply(
        session,
        edit_id,
        and_(_claimable(now), Edit.attempt < max_attempts, Edit.deadline_at > now),
        status=EditStatus.PROCESSING,
        worker=token,
        attempt=Edit.attempt + 1,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        started_at=func.coalesce(Edit.started_at, now),
        progress=0.0,
    )
    if claimed:
        return Claim.CLAIMED
    if _apply(
        session,
        edit_id,
        and_(_claimable(now), Edit.attempt >= max_attempts),
        status=EditStatus.FAILED,
        error_code=WORKER_LOST,
        error_message=f"the job was interrupted {max_attempts} times (its worker died each time)",
        completed_at=now,
        worker=None,
    ):
        return Claim.GAVE_UP
    if _apply(session, edit_id, and_(_claimable(now), Edit.deadline_at <= now), **_timeout_values(now)):
        return Claim.GAVE_UP
    return Claim.SKIPPED


def _timeout_values(now: datetime) -> dict[str, Any]:
    return {
        "status": EditStatus.FAILED,
        "error_code": TIMEOUT,
        "error_message": "the edit did not finish before its deadline",
        "completed_at": now,
        "worker": None,
    }


def _held_by(token: str):
    return and_(Edit.status == EditStatus.PROCESSING, Edit.worker == token)


def _queue_positions_statement():
    """(id, position, cost ahead) of the edits `:ids`: the `starting` edits before the oldest of them counted
    (and their cost summed) once, then for each the `starting` edits between that oldest one and itself."""
    edits = Edit.__table__
    before, within = edits.alias("before_page"), edits.alias("within_page")
    page = (select(edits.c.id, edits.c.created_at)
            .where(edits.c.id.in_(bindparam("ids", expanding=True))).cte("page"))
    oldest = select(func.min(page.c.created_at)).scalar_subquery()

    def ahead(measure):
        return (select(measure(before)).select_from(before)
                .where(before.c.status == EditStatus.STARTING, before.c.created_at < oldest).scalar_subquery())

    def between(measure):
        return (select(measure(within)).select_from(within)
                .where(within.c.status == EditStatus.STARTING, within.c.created_at >= oldest,
                       within.c.created_at < page.c.created_at)
                .correlate(page).scalar_subquery())

    def count(_table):
        return func.count()

    def cost(table):  # rows from before migration 0006 have none
        return func.coalesce(func.sum(func.coalesce(table.c.cost_seconds, 0.0)), 0.0)

    return select(page.c.id, ahead(count) + between(count), ahead(cost) + between(cost))


# Built once: building it per call cost the API more CPU than PostgreSQL spent running it.
_QUEUE_POSITIONS = _queue_positions_statement()


def queue_positions(session: Session, edits: list[Edit]) -> dict[str, Estimate]:
    """How many `starting` edits (of everyone) were created before each of `edits` still `starting`, and their
    cost, by id, in one query for a whole page that walks the queue ahead of the page once (a count per edit
    walked it once per edit: five times for a page of five)."""
    waiting = [edit.id for edit in edits if edit.status == EditStatus.STARTING]
    if not waiting:
        return {}
    rows = session.execute(_QUEUE_POSITIONS, {"ids": waiting}).tuples().all()
    return {edit_id: Estimate(position=position, ahead_seconds=round(float(cost), 3))
            for edit_id, position, cost in rows}


def renew_lease(session: Session, edit_id: str, token: str, lease_seconds: float) -> bool:
    """Heartbeat: extend the lease; False once the row is no longer ours (canceled, reaped)."""
    return _apply(
        session, edit_id, _held_by(token), lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)
    )


def record_progress(session: Session, edit_id: str, token: str, progress: float) -> bool:
    """Store progress in [0, 1]; False once the row is no longer ours."""
    return _apply(session, edit_id, _held_by(token), progress=max(0.0, min(1.0, progress)))


def record_outputs(
    session: Session, edit_id: str, token: str, output_keys: list[str | None], likeness: list[float | None] | None,
    clear_preview: bool = False,
) -> bool:
    """Store the outputs finished so far (a key per alpha, null for those not done) while processing, so
    clients see each strength as it comes; False once the row is no longer ours (the caller deletes what it
    just wrote). `clear_preview`: this output replaces the preview (in the same write, so no reader sees the
    output and a preview that is about to be deleted)."""
    extra: dict[str, Any] = {"preview": None} if clear_preview else {}
    return _apply(session, edit_id, _held_by(token), output_keys=output_keys, likeness=likeness, **extra)


def record_preview(session: Session, edit_id: str, token: str, preview: dict[str, Any]) -> bool:
    """Name the first strength's preview (`{key, index, width, height}`) on the row while processing; False
    once the row is no longer ours (the caller deletes what it just wrote)."""
    return _apply(session, edit_id, _held_by(token), preview=preview)


def record_options(session: Session, edit_id: str, token: str, options: dict[str, Any]) -> bool:
    """Store the edit's resolved parameters without a column of their own (the inverter the deployment's
    default chose); False once the row is no longer ours."""
    return _apply(session, edit_id, _held_by(token), options=options)


def still_held(session: Session, edit_id: str, token: str) -> bool:
    """True while `token` holds the row in `processing` (a cancel or a reap ends that)."""
    row = session.execute(select(Edit.status, Edit.worker).where(Edit.id == edit_id)).one_or_none()
    session.rollback()  # end the read transaction so the next read sees fresh data
    return row is not None and row.status == EditStatus.PROCESSING and row.worker == token


def succeed(
    session: Session,
    edit_id: str,
    token: str,
    output_keys: list[str],
    metrics: dict[str, Any],
    model: dict[str, Any],
    likeness: list[float | None] | None = None,
) -> bool:
    return _apply(
        session,
        edit_id,
        _held_by(token),
        status=EditStatus.SUCCEEDED,
        output_keys=output_keys,
        likeness=likeness,
        metrics=metrics,
        model=model,
        progress=1.0,
        completed_at=utcnow(),
        lease_expires_at=None,
    )


def fail(
    session: Session,
    edit_id: str,
    token: str,
    code: str,
    message: str,
    metrics: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> bool:
    return _apply(
        session,
        edit_id,
        _held_by(token),
        status=EditStatus.FAILED,
        error_code=code,
        error_message=message,
        metrics=metrics,
        model=model,
        completed_at=utcnow(),
        lease_expires_at=None,
    )


def cancel(session: Session, edit_id: str) -> bool:
    """Cancel a queued or running edit at once; a running worker notices and stops (no outputs)."""
    return _apply(
        session,
        edit_id,
        Edit.status.in_(ACTIVE),
        status=EditStatus.CANCELED,
        completed_at=utcnow(),
        lease_expires_at=None,
    )


def release_canceled(session: Session, edit_id: str, token: str) -> bool:
    """A worker whose pipeline raised Canceled while still holding the row marks it canceled."""
    return _apply(
        session,
        edit_id,
        _held_by(token),
        status=EditStatus.CANCELED,
        completed_at=utcnow(),
        lease_expires_at=None,
    )


def requeue_if_lost(session: Session, edit_id: str, max_attempts: int) -> bool:
    """processing → starting when the holder stopped renewing; the caller then re-sends the job."""
    now = utcnow()
    return _apply(
        session,
        edit_id,
        and_(Edit.status == EditStatus.PROCESSING, Edit.lease_expires_at < now, Edit.attempt < max_attempts),
        status=EditStatus.STARTING,
        worker=None,
        lease_expires_at=None,
    )


def lost_edit_ids(session: Session, limit: int = 100) -> list[str]:
    """Processing rows whose lease expired (their worker died or hangs)."""
    ids = session.scalars(
        select(Edit.id)
        .where(Edit.status == EditStatus.PROCESSING, Edit.lease_expires_at < utcnow())
        .limit(limit)
    ).all()
    session.rollback()
    return list(ids)


def fail_exhausted(session: Session, edit_id: str, max_attempts: int) -> bool:
    """A lease-expired row that already used all its attempts fails with `worker_lost`."""
    now = utcnow()
    return _apply(
        session,
        edit_id,
        and_(Edit.status == EditStatus.PROCESSING, Edit.lease_expires_at < now, Edit.attempt >= max_attempts),
        status=EditStatus.FAILED,
        error_code=WORKER_LOST,
        error_message=f"the job was interrupted {max_attempts} times (its worker died each time)",
        completed_at=now,
        worker=None,
    )


def expire_overdue(session: Session) -> int:
    """Fail every active edit past its deadline with `timeout`; returns how many."""
    now = utcnow()
    result = session.execute(
        update(Edit).where(Edit.status.in_(ACTIVE), Edit.deadline_at <= now).values(**_timeout_values(now)),
        execution_options={"synchronize_session": False},
    )
    session.commit()
    return result.rowcount
