"""Per-key request rate limits (Redis token bucket); the caps on queued edits are `common.queue_caps`.

The bucket lives in Redis so every API replica shares it, and the refill uses Redis' own clock
(`TIME`) so replicas with skewed clocks agree. If Redis cannot be reached the limiter lets the
request through: rate limiting protects capacity, and refusing everything while the broker restarts
would turn a blip into an outage (the submission itself still fails cleanly if the broker is down).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis

from common.redis_client import redis_client

log = logging.getLogger(__name__)

# KEYS[1] = bucket; ARGV = rate (tokens/s), burst, cost. Returns {allowed, wait_ms, tokens_left}.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait_ms = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait_ms = math.ceil((cost - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait_ms, math.floor(tokens)}
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


class RateLimiter:
    """Token buckets in Redis keyed by `<namespace>:<subject>` (subject = key hash or client address)."""

    def __init__(self, client: redis.Redis, prefix: str = "ratelimit"):
        self._redis = client
        self._prefix = prefix
        self._script = client.register_script(_TOKEN_BUCKET)

    @classmethod
    def from_url(cls, url: str) -> RateLimiter:
        return cls(redis_client(url, timeout=1.0))

    def take(self, namespace: str, subject: str, rate: Rate, cost: int = 1) -> Decision:
        """Spend `cost` tokens from the bucket; refuse with the wait until they would be there."""
        key = f"{self._prefix}:{namespace}:{subject}"
        try:
            allowed, wait_ms, left = self._script(keys=[key], args=[rate.per_second, rate.burst, cost])
        except redis.RedisError as e:
            log.warning("rate limiter unavailable, letting the request through: %s", type(e).__name__)
            return Decision(allowed=True)
        if allowed:
            return Decision(allowed=True, remaining=int(left))
        return Decision(allowed=False, retry_after_s=max(1, math.ceil(int(wait_ms) / 1000)), remaining=0)

    def close(self) -> None:
        self._redis.close()
