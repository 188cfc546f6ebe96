"""Caps on unfinished edits: the guard on the lifecycle's first step (a new row in `starting`).

At most `per_owner` unfinished (`starting` or `processing`) edits per account and `total` for everyone, so one
account cannot fill the queue and a flood cannot grow it without bound (docs/SECURITY.md); and, since edits differ
in cost by orders of magnitude, at most `cost_per_owner` seconds of edit-worker time unfinished per account
(common/edit_cost.py), counted under the same lock. `admit` is the only
way a new edit enters the queue, and both caps are exact under concurrent submits, without making every
submit of every account wait for one lock (which capped the whole API at one submit per lock hold):

- per owner: a transaction-scoped advisory lock keyed by the owner's hash, held from the count to the commit,
  so one account's submits take turns (two accounts whose hashes collide merely share turns);
- total, on PostgreSQL: each submit also holds a *shared* advisory lock, then counts the unfinished edits.
  Every other submit that could insert unseen by that count holds the shared lock at that moment, so
  `count + holders <= total` proves a free slot (the argument is in `_fast_path`). Holders are backends, so
  the server's `max_connections` bounds them: far from the cap that bound is enough and nothing more is read.
  Closer, a submit reads how many submits hold the lock (`pg_locks`, ~0.2 ms of the server's CPU, so not on
  every submit) and counts again. Nearer still that bound can refuse a submit that would fit, so a submit
  that fails it tries again holding the same lock *exclusively* (it waits for the shared holders to commit)
  and counts exactly.
- on SQLite (one development process) a process lock serializes submits as before.

The commit or rollback releases the advisory locks.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import bindparam, func, inspect, select, text
from sqlalchemy.orm import Session

from common.edit_cost import Estimate
from common.errors import ApiError
from common.lifecycle import ACTIVE, EditStatus
from common.models import Edit
from common.settings import Settings

# Advisory lock keys are (space, key) int4 pairs: "fcap" for the total, "fcao" + the owner's CRC-32 per owner.
TOTAL_SPACE = int.from_bytes(b"fcap", "big") & 0x7FFFFFFF
OWNER_SPACE = int.from_bytes(b"fcao", "big") & 0x7FFFFFFF
# The owner's lock, then the shared total lock (OFFSET 0 keeps the order: the planner cannot merge the two
# levels), and the most backends the server admits: a bound on how many submits can hold the shared lock.
_LOCK_SHARED = text("""
SELECT current_setting('max_connections')::int AS backends
FROM (SELECT pg_advisory_xact_lock_shared(:space, 0)
      FROM (SELECT pg_advisory_xact_lock(:owner_space, :owner_key) OFFSET 0) AS o OFFSET 0) AS g
""")
# How many submits hold the shared total lock now (this one among them).
_HOLDERS = text("""
SELECT count(*) FROM pg_locks AS l
WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ShareLock'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = :space AND l.objid = 0 AND l.objsubid = 2
""")
_LOCK_EXCLUSIVE = text("""
SELECT pg_advisory_xact_lock(:space, 0)
FROM (SELECT pg_advisory_xact_lock(:owner_space, :owner_key) OFFSET 0) AS o
""")
_process_lock = threading.Lock()
# Built once, in Core: building the count per submit and inserting through the ORM's unit of work cost more
# CPU than the database spent on them (docs/BENCHMARKS.md, "API under load").
_EDITS = Edit.__table__
_COST = func.coalesce(_EDITS.c.cost_seconds, 0.0)  # rows from before migration 0006 have none
_COUNTS = select(
    func.count(),
    func.count().filter(_EDITS.c.owner == bindparam("owner")),
    func.count().filter(_EDITS.c.status == EditStatus.STARTING),
    func.coalesce(func.sum(_COST).filter(_EDITS.c.owner == bindparam("owner")), 0.0),
    func.coalesce(func.sum(_COST).filter(_EDITS.c.status == EditStatus.STARTING), 0.0),
).where(_EDITS.c.status.in_(ACTIVE))
_INSERT = _EDITS.insert()
_COLUMNS = {attribute.key: attribute.columns[0] for attribute in inspect(Edit).column_attrs}


@dataclass(frozen=True)
class QueueCaps:
    """At most `per_owner` unfinished edits per owner and `total` overall, and at most `cost_per_owner` seconds
    of their cost per owner (None: no such cap); a refusal says retry in `retry_after_s` seconds."""

    per_owner: int
    total: int
    retry_after_s: int = 5
    cost_per_owner: float | None = None

    def __post_init__(self) -> None:
        if not (self.per_owner >= 1 and self.total >= 1 and self.retry_after_s >= 1):
            raise ValueError("queue caps and retry_after_s must be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueCaps:
        return cls(per_owner=settings.max_queued_per_owner, total=settings.max_queued_total,
                   cost_per_owner=settings.max_queued_cost_seconds_per_owner)


def admit(session: Session, edit: Edit, caps: QueueCaps) -> Estimate:
    """Insert the new `edit` (status `starting`) and commit, or raise 429 `queue_full` with `Retry-After` when
    its owner, or everyone together, already has as many unfinished edits as the caps allow (429
    `cost_budget_exceeded` when its cost, `edit.cost_seconds`, would take its owner's unfinished work past
    `cost_per_owner`). Returns how many `starting` edits were committed before it and their cost (its queue
    position and the work ahead when it was admitted). The row is written from the object's attributes; the
    object itself is not added to the session."""
    if session.get_bind().dialect.name != "postgresql":
        with _process_lock, _rolled_back_on_error(session):
            return _insert(session, edit, caps, _counts(session, edit.owner), in_flight=0)
    owner_key = {"owner_space": OWNER_SPACE, "owner_key": zlib.crc32(edit.owner.encode()) & 0x7FFFFFFF}
    with _rolled_back_on_error(session):
        backends = session.execute(_LOCK_SHARED, {"space": TOTAL_SPACE, **owner_key}).scalar_one()
        counts = _counts(session, edit.owner)
        if _fast_path(counts.everyone, backends, caps) or counts.mine >= caps.per_owner:
            return _insert(session, edit, caps, counts, in_flight=backends - 1)
        holders = session.execute(_HOLDERS, {"space": TOTAL_SPACE}).scalar_one()
        counts = _counts(session, edit.owner)  # after reading the holders: see _fast_path
        if _fast_path(counts.everyone, holders, caps):
            return _insert(session, edit, caps, counts, in_flight=holders - 1)
        session.rollback()  # near the total cap: count again with every other submit finished
        session.execute(_LOCK_EXCLUSIVE, {"space": TOTAL_SPACE, **owner_key})
        return _insert(session, edit, caps, _counts(session, edit.owner), in_flight=0)


def _fast_path(everyone: int, holders: int, caps: QueueCaps) -> bool:
    """Whether a submit holding the shared lock may trust `everyone + holders <= total`, where `holders` is
    at least the number of submits holding the lock when `everyone` was counted (this one included).

    Proof sketch: take any moment and, among the submits admitted and committed by then, the one X that took
    the shared lock last. Any other of them took it before X counted; at X's count it either still held the
    lock (one of X's `holders`) or had committed, and then that count saw its row. So the unfinished edits at
    that moment are at most X's `everyone + holders` (edits that finished only lower it), which X checked
    against `total`. `holders` may be any upper bound read before the count: the server's `max_connections`
    (each holder is a backend), or the holders `pg_locks` listed after X took the lock."""
    return everyone + holders <= caps.total


@dataclass(frozen=True)
class _Counts:
    everyone: int  # unfinished edits of everyone
    mine: int  # ... of the owner
    waiting: int  # `starting` ones: the queue ahead
    my_cost: float  # the cost of the owner's unfinished edits
    waiting_cost: float  # the cost of the queue ahead


def _counts(session: Session, owner: str) -> _Counts:
    """The unfinished edits and their cost, in one query."""
    return _Counts(*session.connection().execute(_COUNTS, {"owner": owner}).one())


def _insert(session: Session, edit: Edit, caps: QueueCaps, counts: _Counts, in_flight: int) -> Estimate:
    """Refuse or insert and commit (the commit releases the locks; the row exists before a worker can
    receive its id). `in_flight`: other submits that may insert unseen (0 when the counts are exact)."""
    if counts.mine >= caps.per_owner:
        raise _full(caps, f"this account already has {counts.mine} unfinished edits (at most {caps.per_owner}); "
                          "wait for some to finish")
    cost = edit.cost_seconds or 0.0
    if caps.cost_per_owner is not None and counts.my_cost + cost > caps.cost_per_owner:
        raise ApiError("cost_budget_exceeded", f"this account's unfinished edits would take about "
                       f"{math.ceil(counts.my_cost)} s of edit-worker time and this one {math.ceil(cost)} s more; at "
                       f"most {caps.cost_per_owner:g} s together (MAX_QUEUED_COST_SECONDS_PER_OWNER): wait for some "
                       "to finish", headers={"Retry-After": str(caps.retry_after_s)})
    if counts.everyone + in_flight >= caps.total:
        raise _full(caps, "the service has too many unfinished edits right now; retry shortly")
    session.connection().execute(_INSERT, _row(edit))
    session.commit()
    return Estimate(position=counts.waiting, ahead_seconds=round(counts.waiting_cost, 3))


def _row(edit: Edit) -> dict[str, object]:
    """The columns `edit` sets (the table's defaults fill the rest, as an ORM flush would). The object stays
    out of the session: the caller reads its attributes, never reloads it."""
    state = inspect(edit).dict
    return {column.key: state[name] for name, column in _COLUMNS.items() if name in state}



def _full(caps: QueueCaps, message: str) -> ApiError:
    return ApiError("queue_full", message, headers={"Retry-After": str(caps.retry_after_s)})


@contextmanager
def _rolled_back_on_error(session: Session) -> Iterator[None]:
    """On a refusal or an error the transaction is rolled back here, which releases the advisory locks at once."""
    try:
        yield
    except BaseException:
        session.rollback()
        raise
