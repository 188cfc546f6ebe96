"""Per-key request rate limits (Redis token bucket); the caps on queued edits are `common.queue_caps`.

The bucket lives in Redis so every API replica shares it, and the refill uses Redis' own clock
(`TIME`) so replicas with skewed clocks agree. If Redis cannot be reached the limiter neither refuses
everything (a broker restart would become an outage) nor lets everything through (a flood timed with
an outage would be unlimited): it falls back to the same buckets kept in this process (`LocalBuckets`,
per replica, so N replicas allow up to N times the rate), logs that once, and tries Redis again only
every `REDIS_RETRY_SECONDS` (a circuit breaker: calls in between do not each wait for a timeout).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.retry import Retry

from common.redis_client import redis_py_url

log = logging.getLogger(__name__)

REDIS_RETRY_SECONDS = 5.0  # while Redis is down, how often one call tries it again
REDIS_TIMEOUT_SECONDS = 0.5  # the longest a request waits for Redis before the fallback answers

# KEYS = buckets; ARGV = rate, burst, cost for each bucket in turn. Every bucket is refilled; the cost is spent from
# all of them only when each has it (a request refused by one bucket spends from none). One round trip for all.
# Returns {allowed, wait_ms (the longest any refusing bucket needs), tokens_left (the least of them)}.
_TOKEN_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels = {}
local allowed = 1
local wait_ms = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  levels[i] = tokens
  if tokens < cost then
    allowed = 0
    wait_ms = math.max(wait_ms, math.ceil((cost - tokens) / rate * 1000))
  end
end
local left = nil
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local tokens = levels[i]
  if allowed == 1 then
    tokens = tokens - tonumber(ARGV[3 * i])
  end
  if left == nil or tokens < left then
    left = tokens
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
return {allowed, wait_ms, math.floor(left)}
"""


@dataclass(frozen=True)
class Rate:
    """`per_second` sustained requests with bursts up to `burst`."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1):
            raise ValueError("rate must be positive and burst at least 1")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int = 0  # whole seconds, >= 1 when refused (the Retry-After header value)
    remaining: int = 0


class LocalBuckets:
    """The token buckets of `_TOKEN_BUCKETS`, in this process: the fallback while Redis is unreachable.
    At most `max_buckets` are kept (least recently used dropped), so random subjects cannot grow it."""

    def __init__(self, max_buckets: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._max = max_buckets
        self._clock = clock
        self._lock = threading.Lock()

    def take(self, key: str, rate: Rate, cost: int = 1) -> Decision:
        return self.take_all([(key, rate)], cost)

    def take_all(self, buckets: list[tuple[str, Rate]], cost: int = 1) -> Decision:
        """`cost` from every bucket, or from none when one of them lacks it (as `_TOKEN_BUCKETS`)."""
        with self._lock:
            now = self._clock()
            levels = []
            for key, rate in buckets:
                tokens, at = self._buckets.pop(key, (float(rate.burst), now))
                levels.append(min(rate.burst, tokens + max(0.0, now - at) * rate.per_second))
            allowed = all(tokens >= cost for tokens in levels)
            for (key, _), tokens in zip(buckets, levels, strict=True):
                self._buckets[key] = (tokens - cost if allowed else tokens, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        if allowed:
            return Decision(allowed=True, remaining=math.floor(min(levels) - cost))
        wait = max((cost - tokens) / rate.per_second for (_, rate), tokens in zip(buckets, levels, strict=True)
                   if tokens < cost)
        return Decision(allowed=False, retry_after_s=max(1, math.ceil(wait)))


class RateLimiter:
    """Token buckets in Redis keyed by `<namespace>:<subject>` (subject = key hash or client address),
    in-process ones while Redis is unreachable.

    `take_all` blocks on Redis (for threads and scripts); `take_all_async` awaits it on the event loop, which is
    what the API's ASGI layers call: run in the threadpool instead, the sync call cost them ~0.33 ms of CPU per
    request in thread hops and lock hand-offs against ~0.06 ms awaited (docs/BENCHMARKS.md, "API under load").
    Both spend from the same buckets with the same script and share the fallback and its circuit breaker."""

    def __init__(self, client: redis.Redis, prefix: str = "ratelimit", clock: Callable[[], float] = time.monotonic,
                 async_client: Callable[[], AsyncRedis] | None = None):
        self._redis = client
        self._prefix = prefix
        self._script = client.register_script(_TOKEN_BUCKETS)
        self._async_client = async_client
        self._async_script: tuple[asyncio.AbstractEventLoop, AsyncScript] | None = None  # and its loop
        self._local = LocalBuckets(clock=clock)
        self._clock = clock
        self._retry_redis_at = 0.0  # while in the future: Redis is considered down
        self._degraded = False

    @classmethod
    def from_url(cls, url: str) -> RateLimiter:
        """A limiter on the broker's Redis that gives up on it after one short timeout: redis-py's default
        retries with backoff would hold a request ~10 s before the fallback takes over."""
        options = {"socket_timeout": REDIS_TIMEOUT_SECONDS, "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}
        address = redis_py_url(url)
        return cls(Redis.from_url(address, retry=Retry(NoBackoff(), 0), **options),
                   async_client=lambda: AsyncRedis.from_url(address, retry=AsyncRetry(NoBackoff(), 0), **options))

    @property
    def degraded(self) -> bool:
        """Whether the last decisions came from the in-process fallback."""
        return self._degraded

    def take(self, namespace: str, subject: str, rate: Rate, cost: int = 1) -> Decision:
        """Spend `cost` tokens from the bucket; refuse with the wait until they would be there."""
        return self.take_all(subject, [(namespace, rate)], cost)

    def take_all(self, subject: str, limits: list[tuple[str, Rate]], cost: int = 1) -> Decision:
        """Spend `cost` from `subject`'s bucket in each `(namespace, rate)` of `limits`, all or none, in one Redis
        round trip; refused, the wait is the longest any of the refusing buckets needs."""
        buckets = self._buckets(subject, limits)
        if self._clock() < self._retry_redis_at:
            return self._local.take_all(buckets, cost)
        try:
            reply = self._script(keys=[key for key, _ in buckets], args=_script_args(buckets, cost))
        except redis.RedisError as e:
            return self._fall_back(e, buckets, cost)
        return self._decision(reply)

    async def take_all_async(self, subject: str, limits: list[tuple[str, Rate]], cost: int = 1) -> Decision:
        """`take_all` awaited on the running event loop (no thread); without an async client, in a thread."""
        if self._async_client is None:
            return await asyncio.to_thread(self.take_all, subject, limits, cost)
        buckets = self._buckets(subject, limits)
        if self._clock() < self._retry_redis_at:
            return self._local.take_all(buckets, cost)
        try:
            reply = await self._loop_script()(keys=[key for key, _ in buckets], args=_script_args(buckets, cost))
        except redis.RedisError as e:
            return self._fall_back(e, buckets, cost)
        return self._decision(reply)

    async def take_async(self, namespace: str, subject: str, rate: Rate, cost: int = 1) -> Decision:
        return await self.take_all_async(subject, [(namespace, rate)], cost)

    def _loop_script(self) -> AsyncScript:
        """The script on an asyncio client of the running loop: an asyncio connection belongs to the loop that
        opened it (one per process in production; tests run several loops, one after another)."""
        loop = asyncio.get_running_loop()
        if self._async_script is None or self._async_script[0] is not loop:
            self._async_script = (loop, self._async_client().register_script(_TOKEN_BUCKETS))
        return self._async_script[1]

    def _buckets(self, subject: str, limits: list[tuple[str, Rate]]) -> list[tuple[str, Rate]]:
        return [(f"{self._prefix}:{namespace}:{subject}", rate) for namespace, rate in limits]

    def _fall_back(self, error: redis.RedisError, buckets: list[tuple[str, Rate]], cost: int) -> Decision:
        self._retry_redis_at = self._clock() + REDIS_RETRY_SECONDS
        if not self._degraded:
            self._degraded = True
            log.warning("rate limiter: Redis unreachable (%s); using in-process buckets, retrying Redis every "
                        "%.0f s", type(error).__name__, REDIS_RETRY_SECONDS)
        return self._local.take_all(buckets, cost)

    def _decision(self, reply: list) -> Decision:
        allowed, wait_ms, left = reply
        if self._degraded:
            self._degraded = False
            log.warning("rate limiter: Redis answers again; buckets are shared again")
        if allowed:
            return Decision(allowed=True, remaining=int(left))
        return Decision(allowed=False, retry_after_s=max(1, math.ceil(int(wait_ms) / 1000)), remaining=0)

    def close(self) -> None:
        self._redis.close()


def _script_args(buckets: list[tuple[str, Rate]], cost: int) -> list[float]:
    """ARGV of `_TOKEN_BUCKETS`: rate, burst, cost for each bucket in turn."""
    return [value for _, rate in buckets for value in (rate.per_second, rate.burst, cost)]
