"""Token bucket against the real Redis, queue caps against a real (SQLite) database."""

import os
import time
import uuid
from datetime import timedelta

import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from common.models import Base, Edit, Image, new_id, utcnow
from common.ratelimit import QueueCaps, Rate, RateLimiter, queue_decision

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def limiter():
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"rl-test-{uuid.uuid4().hex}"
    yield RateLimiter(client, prefix=prefix)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.mark.services
def test_burst_then_refuse_with_retry_after(limiter):
    rate = Rate(per_second=0.5, burst=3)
    decisions = [limiter.take("edits", "key-a", rate) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after_s == 2  # one token at 0.5/s
    assert limiter.take("edits", "key-b", rate).allowed  # buckets are per subject


@pytest.mark.services
def test_refill_over_time(limiter):
    rate = Rate(per_second=20, burst=1)
    assert limiter.take("all", "k", rate).allowed
    assert not limiter.take("all", "k", rate).allowed
    time.sleep(0.08)
    assert limiter.take("all", "k", rate).allowed


def test_redis_down_lets_requests_through():
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    assert RateLimiter(client).take("all", "k", Rate(1, 1)).allowed


def test_rate_validation():
    with pytest.raises(ValueError):
        Rate(per_second=0, burst=1)


def _edit(session: Session, owner: str, status: str) -> None:
    image = Image(id=new_id("img"), owner=owner, format="jpeg", width=8, height=8, bytes=1, sha256="0" * 64)
    session.add(image)
    session.add(Edit(id=new_id("ed"), owner=owner, image_id=image.id, neutral="a", target="b", alphas=[1],
                     beta=0.1, mode="global", output_format="jpeg", status=status,
                     deadline_at=utcnow() + timedelta(hours=1)))


def test_queue_caps_per_owner_and_total():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    caps = QueueCaps(per_owner=2, total=3, retry_after_s=7)
    with Session(engine) as session:
        _edit(session, "alice", "starting")
        _edit(session, "alice", "succeeded")  # finished jobs do not count
        session.flush()
        assert queue_decision(session, "alice", caps).allowed
        _edit(session, "alice", "processing")
        session.flush()
        refused = queue_decision(session, "alice", caps)
        assert not refused.allowed and refused.retry_after_s == 7
        assert queue_decision(session, "bob", caps).allowed
        _edit(session, "bob", "starting")
        session.flush()
        assert not queue_decision(session, "carol", caps).allowed  # 3 active overall
