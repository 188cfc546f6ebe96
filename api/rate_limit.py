"""Per-key request rate limits (ASGI middleware): 429 `{code, message}` with `Retry-After`. The cap on
queued edits is `common.queue_caps`, checked when an edit is submitted.

Buckets are per API key: the hash `api.auth.AuthGate` computed and resolved, read from the scope (never
from the headers again, so the key that was checked is the key that pays). Requests without a valid
key never get here: the gate refuses them and charges the client address. Submissions (POST, and the PUT
of an upload slot's bytes) spend from a second, smaller bucket as well: they create work or store bytes;
reads do not. Both buckets are spent in one Redis
round trip, all or nothing (`RateLimiter.take_all`): a POST refused by one bucket spends from neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from api.asgi import send_error
from api.auth import principal_of
from common.errors import ApiError
from common.ratelimit import Rate, RateLimiter
from common.settings import Settings

# What spends from the submit bucket: every method of /v1 that creates work or stores bytes (the only PUT is
# an upload slot's body, up to MAX_UPLOAD_BYTES).
SUBMIT_METHODS = frozenset({"POST", "PUT"})


@dataclass(frozen=True)
class RateLimits:
    requests: Rate  # every /v1 call
    submits: Rate  # POST /v1/... (uploads, images, edits) and PUT /v1/uploads/{id}

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        return cls(requests=Rate(settings.rate_limit_per_second, settings.rate_limit_burst),
                   submits=Rate(settings.submit_rate_per_second, settings.submit_rate_burst))


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: RateLimiter | None, limits: RateLimits):
        self.app = app
        self.limiter = limiter
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = principal_of(scope) if scope["type"] == "http" else None
        if self.limiter is None or principal is None:  # not /v1, or refused (and charged) by the gate
            await self.app(scope, receive, send)
            return
        limits = [("requests", self.limits.requests)]
        if scope["method"] in SUBMIT_METHODS:
            limits.append(("submits", self.limits.submits))
        decision = await self.limiter.take_all_async("key:" + principal.key_hash, limits)
        if not decision.allowed:
            wait = str(decision.retry_after_s)
            names = " and ".join(name for name, _ in limits) if len(limits) > 1 else limits[0][0]
            await send_error(send, ApiError("rate_limited", f"too many {names} for this key; retry in {wait} s",
                                            headers={"Retry-After": wait}))
            return
        await self.app(scope, receive, send)
