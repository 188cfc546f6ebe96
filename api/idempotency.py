"""ASGI middleware applying `Idempotency-Key` to every authenticated POST under /v1 (see
common.idempotency for the semantics). It sits inside the key check, the rate limiter and the
body-size limit and outside the routes, so no route needs to know about it: the first request runs
normally and its 2xx answer is stored *before* it is sent; a retry with the same key, however soon after
that answer, gets it back with `Idempotent-Replayed: true`. Being inside the key check, a replay needs a key that is valid *now*
(a revoked key gets 401, not its stored 201), and no body is read for an unauthenticated caller.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.asgi import header, send_error
from api.auth import principal_of
from common import idempotency as idem
from common.errors import ApiError

log = logging.getLogger(__name__)

HEADER = b"idempotency-key"
# Response headers worth replaying (not Date, Server, or per-connection ones).
_KEPT_HEADERS = {"content-type", "location", "preference-applied"}


async def _send_raw(send: Send, status: int, headers: dict[str, str], body: bytes, replayed: bool = False) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    if replayed:
        raw.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, ttl_hours: float = 24.0):
        self.app = app
        self.ttl = idem.DEFAULT_TTL * (ttl_hours / 24.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        raw_key = header(scope, HEADER)
        principal = principal_of(scope)
        if raw_key is None or principal is None:  # no key, or unauthenticated (the gate answered 401)
            await self.app(scope, receive, send)
            return
        try:
            key = idem.parse_key(raw_key.decode("latin-1"))
        except idem.InvalidKey as e:
            await send_error(send, ApiError("invalid_idempotency_key", str(e)))
            return
        try:
            body = await self._read_body(receive)
        except ApiError as e:  # the body-size limit refuses while we read; routes are not reached
            await send_error(send, e)
            return
        fp = idem.fingerprint(scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1"),
                              (header(scope, b"content-type") or b"").decode("latin-1"), body)
        key_scope = principal.key_hash
        factory = scope["app"].state.session_factory
        try:
            begun = await run_in_threadpool(self._begin, factory, key_scope, key, fp)
        except SQLAlchemyError:
            await send_error(send, ApiError("service_unavailable", "the database is unreachable; retry shortly",
                                            headers={"Retry-After": "2"}))
            return
        if begun.outcome is idem.Outcome.MISMATCH:
            await send_error(send, ApiError(
                "idempotency_key_reused", "this Idempotency-Key was used with a different request"))
            return
        if begun.outcome is idem.Outcome.IN_FLIGHT:
            await send_error(send, ApiError(
                "idempotency_key_in_flight", "a request with this Idempotency-Key is still being processed",
                headers={"Retry-After": "1"}))
            return
        if begun.outcome is idem.Outcome.REPLAY:
            await _send_raw(send, begun.status or 200, begun.headers or {}, begun.body or b"", replayed=True)
            return
        await self._run(scope, body, send, factory, key_scope, key)

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _begin(self, factory, key_scope: str, key: str, fp: str) -> idem.Begin:
        with factory() as session:
            return idem.begin(session, key_scope, key, fp, ttl=self.ttl)

    async def _run(self, scope: Scope, body: bytes, send: Send, factory, key_scope: str, key: str) -> None:
        """Run the request with its answer held back; record a 2xx (or release the key), *then* answer. Sent
        first, a client's immediate retry could arrive before the record and get 409 in flight (issue 23)."""
        sent_body = False
        start: Message | None = None
        chunks: list[bytes] = []

        async def replay_receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def held_send(message: Message) -> None:  # a POST's answer is small JSON: held whole
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, replay_receive, held_send)
        except BaseException:
            await run_in_threadpool(self._release, factory, key_scope, key)
            raise
        if start is None:  # the app ended without answering: nothing to record or send
            await run_in_threadpool(self._release, factory, key_scope, key)
            return
        status, answer = start["status"], b"".join(chunks)
        try:
            if 200 <= status < 300:
                kept = {name.decode("latin-1").lower(): value.decode("latin-1")
                        for name, value in start.get("headers", [])
                        if name.decode("latin-1").lower() in _KEPT_HEADERS}
                await run_in_threadpool(self._complete, factory, key_scope, key, status, kept, answer)
            else:
                await run_in_threadpool(self._release, factory, key_scope, key)
        except SQLAlchemyError as e:
            # The work is done and is answered; the key stays in flight until its lock lapses (then retried).
            log.warning("idempotency key not recorded: %s", type(e).__name__)
        await send(start)
        await send({"type": "http.response.body", "body": answer})

    @staticmethod
    def _complete(factory, key_scope: str, key: str, status: int, headers: dict[str, str], body: bytes) -> None:
        with factory() as session:
            idem.complete(session, key_scope, key, status, headers, body)

    @staticmethod
    def _release(factory, key_scope: str, key: str) -> None:
        with factory() as session:
            idem.release(session, key_scope, key)
