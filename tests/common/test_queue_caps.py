"""Queue caps: `admit` counts unfinished edits and inserts the new one, or refuses with 429 `queue_full`.

The caps stay exact when many accounts submit at once: submits of different accounts do not wait for one
global lock on PostgreSQL, they hold a shared lock and count its holders, and near the total cap fall back
to the exclusive lock. The concurrent tests start every submit at one barrier so they all count the same
queue, and check that no cap is overshot and no submit that fits is refused. (Concurrent submits through
the API: tests/api/test_accounts.py.)"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from common.errors import ApiError
from common.lifecycle import ACTIVE, EditStatus
from common.models import Edit, Image, new_id, utcnow
from common.queue_caps import QueueCaps, admit
from tests.services.attack_counts import count
from tests.services.sessions import BOTH, sessions_on

pytestmark = pytest.mark.trust


@pytest.fixture(params=BOTH)
def factory(request, tmp_path):
    yield from sessions_on(request, tmp_path, "fresh_pg_url")  # its own database: the total is only this test's rows


def _edit(factory, owner: str, status: EditStatus = EditStatus.STARTING) -> Edit:
    with factory() as session:
        image = Image(
            id=new_id("img"), owner=owner, format="jpeg", width=8, height=8, bytes=1, sha256="0" * 64
        )
        session.add(image)
        session.commit()
    return Edit(id=new_id("edt"), owner=owner, image_id=image.id, changes=[{"neutral": "a", "target": "b", "weight": 1.0}], alphas=[1], beta=0.1,
                mode="global", output_format="jpeg", status=status, deadline_at=utcnow() + timedelta(hours=1))  # fmt: skip


def _admit(factory, edit: Edit, caps: QueueCaps) -> None:
    with factory() as session:
        admit(session, edit, caps)


def _stored(factory, owner: str) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Edit).where(Edit.owner == owner))


def test_caps_per_owner_and_total_count_only_unfinished_edits(factory):
    alice, bob, carol = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("alice", "bob", "carol"))
    with factory() as session:  # the shared PostgreSQL database may hold other tests' rows
        others = session.scalar(select(func.count()).select_from(Edit).where(Edit.status.in_(ACTIVE)))
    caps = QueueCaps(per_owner=2, total=others + 3, retry_after_s=7)
    _admit(factory, _edit(factory, alice), caps)
    for finished in (EditStatus.SUCCEEDED, EditStatus.FAILED, EditStatus.CANCELED):
        _admit(factory, _edit(factory, alice, finished), caps)  # finished edits do not count
    _admit(factory, _edit(factory, alice, EditStatus.PROCESSING), caps)
    with pytest.raises(ApiError) as refused:
        _admit(factory, _edit(factory, alice), caps)
    assert refused.value.code == "queue_full" and refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "7"} and "at most 2" in refused.value.message
    assert _stored(factory, alice) == 5  # the refused edit was not inserted
    _admit(factory, _edit(factory, bob), caps)  # per owner: bob still may
    with pytest.raises(ApiError) as full:
        _admit(factory, _edit(factory, carol), caps)  # 3 unfinished overall
    assert full.value.code == "queue_full" and _stored(factory, carol) == 0


def test_a_refusal_releases_the_lock(factory):
    """The refused submit rolls back (on PostgreSQL that ends its advisory lock), so the next one is not stuck."""
    owner = f"dave-{uuid.uuid4().hex[:8]}"
    caps = QueueCaps(per_owner=1, total=10**6)
    _admit(factory, _edit(factory, owner), caps)
    with factory() as session:
        with pytest.raises(ApiError):
            admit(session, _edit(factory, owner), caps)
        assert not session.in_transaction()
    _admit(factory, _edit(factory, f"erin-{uuid.uuid4().hex[:8]}"), caps)


@pytest.mark.parametrize("field", ["per_owner", "total", "retry_after_s"])
def test_caps_must_be_positive(field):
    values = {"per_owner": 1, "total": 1, "retry_after_s": 1, field: 0}
    with pytest.raises(ValueError):
        QueueCaps(**values)


# --- many accounts at once ---------------------------------------------------------------------------


def _images(factory, owners: list[str]) -> dict[str, str]:
    with factory() as session:
        images = {owner: Image(id=new_id("img"), owner=owner, format="jpeg", width=8, height=8, bytes=1,
                               sha256="0" * 64) for owner in owners}  # fmt: skip
        session.add_all(images.values())
        session.commit()
        return {owner: image.id for owner, image in images.items()}


def _submit_all_at_once(factory, submits: list[str], caps: QueueCaps) -> list[str]:
    """Each owner in `submits` submits one edit, all released together: 'admitted' or the refusal's code."""
    images = _images(factory, sorted(set(submits)))
    barrier = threading.Barrier(len(submits))

    def submit(owner: str) -> str:
        edit = Edit(id=new_id("edt"), owner=owner, image_id=images[owner], changes=[{"neutral": "a", "target": "b", "weight": 1.0}], alphas=[1],
                    beta=0.1, mode="global", output_format="jpeg", status="starting",
                    deadline_at=utcnow() + timedelta(hours=1))  # fmt: skip
        with factory() as session:
            barrier.wait(timeout=30)
            try:
                admit(session, edit, caps)
            except ApiError as refused:
                return refused.code
        return "admitted"

    with ThreadPoolExecutor(len(submits)) as pool:
        return list(pool.map(submit, submits))


def _stored_by_owner(factory) -> Counter:
    with factory() as session:
        return Counter(dict(session.execute(select(Edit.owner, func.count()).group_by(Edit.owner)).all()))


def test_the_total_cap_is_exact_when_many_accounts_submit_at_once(factory):
    """24 accounts, one submit each, against a total of 5: exactly 5 get in, the rest are `queue_full`."""
    owners = [f"user{i}-{uuid.uuid4().hex[:6]}" for i in range(24)]
    outcomes = _submit_all_at_once(factory, owners, QueueCaps(per_owner=100, total=5))
    count("cases tried", len(owners))
    assert Counter(outcomes) == {"admitted": 5, "queue_full": 19}
    assert sum(_stored_by_owner(factory).values()) == 5


def test_both_caps_hold_together_and_nothing_that_fits_is_refused(factory):
    """8 accounts submit 3 each at once, at most 2 per account and 11 in all: 11 get in (the total binds),
    nobody has more than 2. Then, far below the cap, 16 accounts at once all get in (no false refusal)."""
    owners = [f"user{i}-{uuid.uuid4().hex[:6]}" for i in range(8)]
    outcomes = _submit_all_at_once(factory, [o for o in owners for _ in range(3)], QueueCaps(per_owner=2, total=11))
    stored = _stored_by_owner(factory)
    count("cases tried", 24)
    assert Counter(outcomes)["admitted"] == sum(stored.values()) == 11
    assert max(stored.values()) <= 2
    more = [f"more{i}-{uuid.uuid4().hex[:6]}" for i in range(16)]
    assert _submit_all_at_once(factory, more, QueueCaps(per_owner=2, total=1000)) == ["admitted"] * 16
