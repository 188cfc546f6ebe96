"""The edit state machine on PostgreSQL: each transition is one conditional UPDATE, so racing
workers, redelivered messages and late finishes can never produce two results."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from common import lifecycle
from common.db import make_engine, make_session_factory
from common.lifecycle import TERMINAL, Claim, EditStatus
from common.models import Edit, Image, new_id, utcnow
from tests.conftest import fresh_database

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def factory():
    """A database of this module's own: the session's worker (tests/api) reaps the session database, and its
    reaper took these tests' lease-expired rows (test_attempts_are_capped then saw `skipped`)."""
    with fresh_database() as url:
        engine = make_engine(url)
        yield make_session_factory(engine)
        engine.dispose()


@pytest.fixture
def edit_id(factory) -> str:
    return _insert(factory, utcnow())


def _insert(factory, now: datetime, status: EditStatus = EditStatus.STARTING, cost: float | None = None) -> str:
    with factory() as session:
        image = Image(id=new_id("img"), owner="o", format="jpeg", width=8, height=8, bytes=1, sha256="0" * 64)
        edit = Edit(
            id=new_id("edt"), owner="o", image_id=image.id, changes=[{"neutral": "a face", "target": "a smile", "weight": 1.0}], alphas=[1.0],
            beta=0.1, mode="global", output_format="jpeg", status=status, attempt=0, created_at=now,
            deadline_at=now + timedelta(minutes=10), cost_seconds=cost,
        )  # fmt: skip
        session.add(image)
        session.flush()  # no ORM relationship orders the inserts for us
        session.add(edit)
        session.commit()
        return edit.id


def _row(factory, edit_id) -> Edit:
    with factory() as session:
        return session.get(Edit, edit_id)


def _claim(factory, edit_id, token, lease=30.0, attempts=3) -> Claim:
    with factory() as session:
        return lifecycle.claim(session, edit_id, token, lease, attempts)


def test_only_one_of_many_racing_claims_wins(factory, edit_id):
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda i: _claim(factory, edit_id, f"w{i}"), range(16)))
    assert outcomes.count(Claim.CLAIMED) == 1
    row = _row(factory, edit_id)
    assert row.status == EditStatus.PROCESSING and row.attempt == 1 and row.started_at is not None


def test_finish_requires_the_current_token(factory, edit_id):
    assert _claim(factory, edit_id, "first") is Claim.CLAIMED
    with factory() as session:
        assert not lifecycle.succeed(session, edit_id, "someone-else", ["k"], {}, {})
        assert lifecycle.succeed(session, edit_id, "first", ["results/x/0.jpg"], {"total_seconds": 1.0}, {})
        assert not lifecycle.succeed(session, edit_id, "first", ["again"], {}, {})  # already terminal
    row = _row(factory, edit_id)
    assert row.status == EditStatus.SUCCEEDED and row.output_keys == ["results/x/0.jpg"] and row.completed_at
    assert _claim(factory, edit_id, "redelivered") is Claim.SKIPPED


def test_live_lease_blocks_a_second_claim_expired_lease_allows_it(factory, edit_id):
    assert _claim(factory, edit_id, "a", lease=0.3) is Claim.CLAIMED
    assert _claim(factory, edit_id, "b") is Claim.SKIPPED
    time.sleep(0.4)
    assert _claim(factory, edit_id, "b") is Claim.CLAIMED
    with factory() as session:
        assert not lifecycle.record_progress(session, edit_id, "a", 0.5)  # the old holder lost the row
        assert not lifecycle.still_held(session, edit_id, "a")
        assert lifecycle.still_held(session, edit_id, "b")
    assert _row(factory, edit_id).attempt == 2


def test_cancel_while_queued_and_while_running(factory, edit_id):
    with factory() as session:
        assert lifecycle.cancel(session, edit_id)
        assert not lifecycle.cancel(session, edit_id)
    assert _row(factory, edit_id).status == EditStatus.CANCELED
    assert _claim(factory, edit_id, "late-worker") is Claim.SKIPPED


def test_cancel_while_running_makes_the_worker_lose_the_row(factory, edit_id):
    assert _claim(factory, edit_id, "w") is Claim.CLAIMED
    with factory() as session:
        assert lifecycle.cancel(session, edit_id)
        assert not lifecycle.still_held(session, edit_id, "w")
        assert not lifecycle.succeed(session, edit_id, "w", ["k"], {}, {})
    assert _row(factory, edit_id).status == EditStatus.CANCELED


def test_attempts_are_capped(factory, edit_id):
    for attempt in range(2):
        assert _claim(factory, edit_id, f"w{attempt}", lease=0.05, attempts=2) is Claim.CLAIMED
        time.sleep(0.1)
    assert _claim(factory, edit_id, "w3", attempts=2) is Claim.GAVE_UP
    row = _row(factory, edit_id)
    assert row.status == EditStatus.FAILED and row.error_code == "worker_lost"


def test_reaper_transitions(factory, edit_id):
    assert _claim(factory, edit_id, "dead", lease=0.05) is Claim.CLAIMED
    time.sleep(0.1)
    with factory() as session:
        assert edit_id in lifecycle.lost_edit_ids(session)
        assert lifecycle.requeue_if_lost(session, edit_id, max_attempts=3)
    assert _row(factory, edit_id).status == EditStatus.STARTING
    with factory() as session:
        session.execute(update(Edit).where(Edit.id == edit_id).values(deadline_at=utcnow() - timedelta(seconds=1)))
        session.commit()
        assert lifecycle.expire_overdue(session) >= 1
    row = _row(factory, edit_id)
    assert row.status == EditStatus.FAILED and row.error_code == "timeout"


def test_statuses_are_one_enum():
    assert [s.value for s in EditStatus] == ["starting", "processing", "succeeded", "failed", "canceled"]
    assert TERMINAL == {EditStatus.SUCCEEDED, EditStatus.FAILED, EditStatus.CANCELED}
    assert EditStatus("failed") is EditStatus.FAILED and f"{EditStatus.FAILED}" == "failed"


def test_queue_positions_count_the_starting_edits_created_before(factory):
    """One query for any number of edits; ties in created_at are not ahead of each other; only `starting`
    edits get a position, and only `starting` ones count (times in 2000, before any other test's rows)."""
    t0 = datetime(2000, 1, 1, tzinfo=UTC)
    _insert(factory, t0 - timedelta(seconds=1), EditStatus.PROCESSING)  # running: not in the queue
    ids = [_insert(factory, t0 + timedelta(seconds=s), cost=c) for s, c in ((0, 10.0), (1, 20.0), (1, 40.0), (2, None))]
    done = _insert(factory, t0 + timedelta(seconds=3), EditStatus.SUCCEEDED)
    with factory() as session:
        try:
            rows = [session.get(Edit, i) for i in [*ids, done]]
            places = lifecycle.queue_positions(session, rows)  # and the cost queued ahead (none: before 0006)
            assert {i: (p.position, p.ahead_seconds) for i, p in places.items()} == dict(
                zip(ids, [(0, 0.0), (1, 10.0), (1, 10.0), (3, 70.0)], strict=True))
            assert lifecycle.queue_positions(session, []) == {}
        finally:  # out of the shared database's queue (a reaper would re-send them)
            for edit_id in ids:
                lifecycle.cancel(session, edit_id)
