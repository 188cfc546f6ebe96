"""Queue caps: `admit` counts unfinished edits and inserts the new one, or refuses with 429 `queue_full`.
(Concurrent submits through the API: tests/trust/test_api_trust.py.)"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from common.errors import ApiError
from common.lifecycle import ACTIVE, EditStatus
from common.models import Edit, Image, new_id, utcnow
from common.queue_caps import QueueCaps, admit
from tests.services.sessions import BOTH, sessions_on


@pytest.fixture(params=BOTH)
def factory(request, tmp_path):
    yield from sessions_on(request, tmp_path)


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
