"""`RateLimiter.take_all_async`, what the API's ASGI layers await: the same Redis buckets as the blocking
`take_all`, the same fallback when Redis hangs, on whichever event loop runs it. (The blocking limiter and its
fallback: tests/trust/test_ratelimit.py, test_ingress_limiter_fallback.py.)"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest

from common.ratelimit import Rate, RateLimiter


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
