"""Who is calling: one parser for `Authorization`, one hash, one lookup, before any body is read.

`AuthGate` is the ASGI layer in front of the rate limiter, the body limit, idempotency and the routes
(the order is in `api.main`). For a request under /v1 it

1. parses the credentials once (`parse_credentials`): exactly one `Authorization: Bearer <token>`. A
   repeated header, control or non-ASCII characters, a token with characters no key has, or a key sent
   under another scheme are *ambiguous* (two parsers could read them differently, which is how a second
   header once escaped the per-key limits) and refused: 401 `ambiguous_credentials`;
2. hashes the token once (`api.keys.hash_key`) and resolves it with one indexed query, in a thread; the
   dev key counts only in dev mode;
3. refuses a missing, malformed or unknown key with 401 *before the body is read*, and charges that
   failure to the client address: one bucket per address, so a stream of random tokens does not get a
   fresh bucket per token (429 once it is empty);
4. leaves the `Principal` in the scope, where the limiter, idempotency and `api.deps.get_owner` read it.

A key found live is remembered for `AUTH_CACHE_SECONDS` (`LiveKeys`), so a client's requests do not each
pay a database round trip. A revocation is announced on Redis and every replica forgets the key on receipt
(api/key_revocations.py), so it takes effect at once; AUTH_CACHE_SECONDS bounds it only while Redis is
unreachable. Only live keys are remembered, never failures, so a key created a moment ago works at once
and random tokens cannot fill the cache (it is bounded anyway).
"""

from __future__ import annotations

import hmac
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api import key_revocations
from api.asgi import client_host, header_values, send_error
from api.keys import KEY_PREFIX, hash_key, owner_for_hash
from common.errors import ApiError
from common.ratelimit import Rate, RateLimiter
from common.settings import Settings

DEV_OWNER = "dev"
PRINCIPAL = "faceedit.principal"  # the scope entry AuthGate fills
# RFC 6750 b64token: what a bearer token may contain. Our keys are `fe_` + URL-safe base64.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_LENGTH = 512
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_HOW = "send `Authorization: Bearer <api key>` (create one with `python -m api keys create`)"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the account and the hash of the key it presented."""

    owner: str
    key_hash: str  # api.keys.hash_key of the token: rate-limit bucket and idempotency scope


@dataclass(frozen=True)
class Credentials:
    """The parsed `Authorization` header: a key hash, or why there is none."""

    key_hash: str | None = None
    refusal: ApiError | None = None


def _unauthorized(message: str) -> Credentials:
    return Credentials(refusal=ApiError("unauthorized", message, headers=_CHALLENGE))


def _ambiguous(message: str) -> Credentials:
    return Credentials(refusal=ApiError("ambiguous_credentials", message, headers=_CHALLENGE))


def parse_credentials(scope: Scope) -> Credentials:
    """The one reading of a request's credentials; every layer uses its result, none re-parses."""
    values = header_values(scope, b"authorization")
    if not values:
        return _unauthorized(_HOW)
    if len(values) > 1:
        return _ambiguous(f"send one Authorization header, not {len(values)}")
    raw = values[0]
    if any(byte < 0x20 or byte >= 0x7F for byte in raw):
        return _ambiguous("the Authorization header has control or non-ASCII characters")
    text = raw.decode("ascii").strip(" ")
    scheme, _, rest = text.partition(" ")
    token = rest.strip(" ")
    if scheme.lower() != "bearer":
        if KEY_PREFIX in text:
            return _ambiguous("an API key goes in `Authorization: Bearer <key>`, under no other scheme")
        return _unauthorized(_HOW)
    if not token:
        return _unauthorized(_HOW)
    if len(token) > MAX_TOKEN_LENGTH:
        return _unauthorized("unknown or revoked API key")
    if not _TOKEN.fullmatch(token):
        return _ambiguous("the bearer token has characters no API key has (spaces, quotes, commas...)")
    return Credentials(key_hash=hash_key(token))


class LiveKeys:
    """Key hash → owner of keys recently found live, each for `ttl_s` seconds from its lookup (not renewed on
    use, so a revocation always takes effect within `ttl_s`); at most `max_keys`, least recently used dropped.
    `forget` drops a revoked key at once; a lookup that began before a `forget` is not remembered (it may
    have read the key live just before the revocation committed)."""

    def __init__(self, ttl_s: float, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self._max = max_keys
        self._clock = clock
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key hash -> (owner, expires at)
        self._lock = threading.Lock()
        self._forgotten = 0  # how many forgets so far: a lookup remembers only if none happened meanwhile

    @property
    def generation(self) -> int:
        """Pass to `put` what this was before the lookup began."""
        return self._forgotten

    def forget(self, key_hash: str) -> None:
        with self._lock:
            self._forgotten += 1
            self._owners.pop(key_hash, None)

    def forget_all(self) -> None:
        with self._lock:
            self._forgotten += 1
            self._owners.clear()

    def get(self, key_hash: str) -> str | None:
        with self._lock:
            entry = self._owners.get(key_hash)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._owners[key_hash]
                return None
            self._owners.move_to_end(key_hash)
            return entry[0]

    def put(self, key_hash: str, owner: str, generation: int | None = None) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if generation is not None and generation != self._forgotten:
                return  # a revocation arrived while the key was looked up
            self._owners[key_hash] = (owner, self._clock() + self.ttl_s)
            self._owners.move_to_end(key_hash)
            while len(self._owners) > self._max:
                self._owners.popitem(last=False)


class AuthGate:
    """Authenticate /v1 requests from their headers alone, before anything reads the body."""

    def __init__(self, app: ASGIApp, settings: Settings, session_factory: sessionmaker[Session],
                 limiter: RateLimiter | None):
        self.app = app
        self.session_factory = session_factory
        self.limiter = limiter
        self.failures = Rate(settings.auth_failure_per_second, settings.auth_failure_burst)
        has_dev_key = settings.dev_mode and settings.dev_api_key
        self.dev_key_hash = hash_key(settings.dev_api_key) if has_dev_key else None
        self.live_keys = LiveKeys(settings.auth_cache_seconds)
        if settings.redis_url and settings.auth_cache_seconds > 0:
            key_revocations.listen(settings.redis_url, self.live_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        credentials = parse_credentials(scope)
        refusal = credentials.refusal
        principal = None
        if credentials.key_hash is not None:
            try:
                principal = self.remembered(credentials.key_hash) or await run_in_threadpool(
                    self.resolve, credentials.key_hash)
            except SQLAlchemyError:
                await send_error(send, ApiError("service_unavailable", "the database is unreachable; retry shortly",
                                                headers={"Retry-After": "2"}))
                return
            if principal is None:
                refusal = ApiError("unauthorized", "unknown or revoked API key", headers=_CHALLENGE)
        if principal is None:
            await self._refuse(scope, send, refusal or ApiError("unauthorized", _HOW, headers=_CHALLENGE))
            return
        scope[PRINCIPAL] = principal
        await self.app(scope, receive, send)

    def remembered(self, key_hash: str) -> Principal | None:
        """The caller behind `key_hash` if its key was found live less than AUTH_CACHE_SECONDS ago (no I/O)."""
        owner = self.live_keys.get(key_hash)
        return Principal(owner=owner, key_hash=key_hash) if owner is not None else None

    def resolve(self, key_hash: str) -> Principal | None:
        """The caller behind `key_hash`: the dev key (dev mode only) or a live key row (then remembered)."""
        if self.dev_key_hash is not None and hmac.compare_digest(key_hash, self.dev_key_hash):
            return Principal(owner=DEV_OWNER, key_hash=key_hash)
        generation = self.live_keys.generation
        with self.session_factory() as session:
            owner = owner_for_hash(session, key_hash)
        if owner is None:
            return None
        self.live_keys.put(key_hash, owner, generation)
        return Principal(owner=owner, key_hash=key_hash)

    async def _refuse(self, scope: Scope, send: Send, refusal: ApiError) -> None:
        """401, charged to the client address; 429 once that address has failed too often."""
        if self.limiter is not None:
            decision = await self.limiter.take_async("auth", f"addr:{client_host(scope)}", self.failures)
            if not decision.allowed:
                wait = str(decision.retry_after_s)
                refusal = ApiError("rate_limited", f"too many requests without a valid key from this address; "
                                   f"retry in {wait} s", headers={"Retry-After": wait})
        await send_error(send, refusal)


def principal_of(scope: Scope) -> Principal | None:
    """The caller AuthGate resolved for this request (None outside /v1)."""
    return scope.get(PRINCIPAL)
