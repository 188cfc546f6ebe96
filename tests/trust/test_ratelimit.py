"""Token bucket against the real Redis (queue caps: tests/common/test_queue_caps.py)."""

import os
import time
import uuid

import pytest
import redis

from common.ratelimit import Rate, RateLimiter

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
