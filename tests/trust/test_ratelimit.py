"""Token bucket against the real Redis (queue caps: tests/common/test_queue_caps.py)."""

import os
import time
import uuid

import pytest
import redis

from common.ratelimit import LocalBuckets, Rate, RateLimiter

pytestmark = pytest.mark.trust

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def limiter():
    client = redis.Redis.from_url(REDIS_URL)  # the harness has made it answer (tests/services/provision.py)
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


@pytest.mark.services
def test_several_buckets_in_one_call_all_or_none(limiter):
    """Requests and submits are spent in one round trip: a call one bucket refuses spends from neither, and the
    wait is the refusing bucket's."""
    wide, narrow = Rate(per_second=0.001, burst=10), Rate(per_second=0.25, burst=2)  # wide: no refill meanwhile
    both = [("requests", wide), ("submits", narrow)]
    decisions = [limiter.take_all("key-a", both) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[-1].retry_after_s == 4  # one submit token at 0.25/s
    # the refused call took nothing from the wide bucket: 10 - 2 requests are left of its burst
    assert [limiter.take("requests", "key-a", wide).allowed for _ in range(9)] == [True] * 8 + [False]


def test_local_buckets_spend_from_all_or_none():
    now = [0.0]
    buckets = LocalBuckets(clock=lambda: now[0])
    wide, narrow = Rate(per_second=100, burst=10), Rate(per_second=0.5, burst=1)
    assert buckets.take_all([("w", wide), ("n", narrow)]).allowed
    refused = buckets.take_all([("w", wide), ("n", narrow)])
    assert (refused.allowed, refused.retry_after_s) == (False, 2)
    assert [buckets.take("w", wide).allowed for _ in range(10)] == [True] * 9 + [False]
