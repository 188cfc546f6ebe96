"""Per-key request rate limits (ASGI middleware): 429 `{code, message}` with `Retry-After`. The cap on
queued edits is `common.queue_caps`, checked when an edit is submitted.

Buckets are per API key (its SHA-256, the same value stored in `api_keys.key_hash`), or per client
address for requests without a key, so key guessing is throttled too. Submissions (POST) spend from
a second, smaller bucket as well: they create work; reads do not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import ApiError
from common.ratelimit import Rate, RateLimiter
from common.settings import Settings


@dataclass(frozen=True)
class RateLimits:
    requests: Rate  # every /v1 call
    submits: Rate  # POST /v1/... (uploads, images, edits)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        return cls(requests=Rate(settings.rate_limit_per_second, settings.rate_limit_burst),
                   submits=Rate(settings.submit_rate_per_second, settings.submit_rate_burst))


def _subject(scope: Scope) -> str:
    scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "key:" + hashlib.sha256(token.strip().encode()).hexdigest()
    client = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: RateLimiter | None, limits: RateLimits):
        self.app = app
        self.limiter = limiter
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.limiter is None or scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        subject = _subject(scope)
        checks = [("requests", self.limits.requests)]
        if scope["method"] == "POST":
            checks.append(("submits", self.limits.submits))
        for namespace, rate in checks:
            decision = await run_in_threadpool(self.limiter.take, namespace, subject, rate)
            if not decision.allowed:
                error = ApiError("rate_limited", f"too many {namespace} for this key; retry in "
                                 f"{decision.retry_after_s} s", headers={"Retry-After": str(decision.retry_after_s)})
                body = json.dumps(error.body()).encode()
                await send({"type": "http.response.start", "status": 429, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(decision.retry_after_s).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
