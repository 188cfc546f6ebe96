"""Low: with Redis unreachable the limiter let every request through, after waiting a full socket
timeout on each. Now it keeps the same buckets in process, tries Redis again only every few seconds
(one timeout per window, not per call), and says so once in the log."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from common.ratelimit import LocalBuckets, Rate, RateLimiter
from tests.services.attack_counts import count

pytestmark = pytest.mark.trust


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
