"""The rate limiter (`common.ratelimit`): token buckets on Redis, several spent in one call all or none, the
blocking `take_all` and the `take_all_async` the API's ASGI layers await spending from the same buckets; and,
with Redis unreachable or hanging (it used to let every request through after a full socket timeout each),
the same buckets kept in process, one timeout per retry window rather than per call, said once in the log.
Queue caps: tests/common/test_queue_caps.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid

import pytest
import redis

from common.ratelimit import LocalBuckets, Rate, RateLimiter
from tests.services.attack_counts import count

pytestmark = pytest.mark.trust


@pytest.fixture
def limiter(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"rl-test-{uuid.uuid4().hex}"
    yield RateLimiter(client, prefix=prefix)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


# --- buckets on Redis --------------------------------------------------------------------------------


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


@pytest.mark.services
def test_async_and_blocking_calls_spend_from_the_same_buckets(redis_url):
    limiter = RateLimiter.from_url(redis_url)
    subject = f"key:{uuid.uuid4().hex}"
    limits = [("requests", Rate(per_second=0.01, burst=5)), ("submits", Rate(per_second=0.01, burst=3))]
    try:
        assert limiter.take_all(subject, limits).remaining == 2
        first = asyncio.run(limiter.take_all_async(subject, limits))
        assert first.allowed and first.remaining == 1  # the least of the two buckets after this spend
        assert limiter.take_all(subject, limits).allowed
        refused = asyncio.run(limiter.take_all_async(subject, limits))  # a second loop: a client of its own
    finally:
        limiter.close()
    assert not refused.allowed and refused.retry_after_s >= 100  # 1 token at 0.01/s
    assert not limiter.degraded


# --- Redis unreachable or hanging: the same buckets in process -----------------------------------


def test_a_hanging_redis_costs_one_timeout_and_limits_still_hold(caplog):
    silent = socket.socket()  # accepts connections (the kernel backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    limiter = RateLimiter.from_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
    rate = Rate(per_second=0.01, burst=3)
    try:
        with caplog.at_level(logging.WARNING, logger="common.ratelimit"):
            started = time.monotonic()
            decisions = [limiter.take("requests", "key:abc", rate) for _ in range(20)]
            elapsed = time.monotonic() - started
    finally:
        silent.close()
    count("cases tried", 20)
    assert [d.allowed for d in decisions[:5]] == [True, True, True, False, False]
    assert all(not d.allowed and d.retry_after_s >= 1 for d in decisions[3:])
    assert elapsed < 1.5, f"{elapsed:.2f} s: each call waited for Redis"
    assert limiter.degraded
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


def test_local_buckets_refill_and_stay_bounded():
    now = [0.0]
    buckets = LocalBuckets(max_buckets=100, clock=lambda: now[0])
    rate = Rate(per_second=2, burst=2)
    assert [buckets.take("a", rate).allowed for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert buckets.take("a", rate).allowed
    for i in range(1000):
        buckets.take(f"random-{i}", rate)
    assert len(buckets._buckets) == 100


def test_a_hanging_redis_costs_the_async_caller_one_timeout_and_limits_still_hold():
    silent = socket.socket()  # accepts connections (the kernel backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    limiter = RateLimiter.from_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
    rate = Rate(per_second=0.01, burst=3)

    async def twenty():
        return [await limiter.take_async("requests", "key:abc", rate) for _ in range(20)]

    try:
        started = time.monotonic()
        decisions = asyncio.run(twenty())
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert [d.allowed for d in decisions[:5]] == [True, True, True, False, False]
    assert elapsed < 1.5, f"{elapsed:.2f} s: each call waited for Redis"
    assert limiter.degraded
