"""Refuse request bodies larger than their route needs, before they are read into memory.

Two limits: the routes that take a photo (multipart `POST /v1/images`, `PUT /v1/uploads/{id}`) may send
`MAX_UPLOAD_BYTES` plus multipart framing; every other request is JSON or empty and gets
`MAX_JSON_BODY_BYTES` (64 KiB). A parsed JSON body costs tens of times its size in Python objects, so a
26 MiB limit on JSON routes let one request hold hundreds of MiB (docs/SECURITY.md, H1).

`Content-Length` is checked up front. A small body is read here, whole, up to its limit, and handed
on; so a chunked body over it is a 413 from this layer (a limit raised inside FastAPI's own body read
would come out as its generic 400). A photo body streams through, counted chunk by chunk; the routes
and the idempotency layer that read it let the 413 through.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.asgi import header, send_error
from common.errors import ApiError
from common.header_integer import header_integer

_UPLOAD_SLOT = re.compile(r"/v1/uploads/[^/]+")


def takes_photo(scope: Scope) -> bool:
    """Whether the request is one of the two that carry a photo's bytes."""
    method, path = scope["method"], scope["path"].rstrip("/")
    if method == "POST" and path == "/v1/images":
        content_type = (header(scope, b"content-type") or b"").lower()
        return content_type.startswith(b"multipart/form-data")
    return method == "PUT" and _UPLOAD_SLOT.fullmatch(path) is not None


def too_large(limit: int) -> ApiError:
    return ApiError("payload_too_large", f"the request body exceeds {limit} bytes")


class BodySizeLimit:
    def __init__(self, app: ASGIApp, json_max_bytes: int, photo_max_bytes: int):
        self.app = app
        self.json_max_bytes = json_max_bytes
        self.photo_max_bytes = photo_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        photo = takes_photo(scope)
        limit = self.photo_max_bytes if photo else self.json_max_bytes
        declared = header(scope, b"content-length")
        if declared is not None and ((length := header_integer(declared)) is None or length > limit):
            await send_error(send, too_large(limit))
            return
        if photo:
            await self.app(scope, _counted(receive, limit), send)
            return
        first = await _read_small(receive, limit)
        if first is None:
            await send_error(send, too_large(limit))
            return
        await self.app(scope, _replay(first, receive), send)


def _counted(receive: Receive, limit: int) -> Receive:
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(limit)  # inside the route's read: the ApiError handler answers 413
        return message

    return counted


async def _read_small(receive: Receive, limit: int) -> Message | None:
    """The whole body as one message, or None when it outgrows `limit` (or a disconnect message)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return message
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            return None
        chunks.append(body)
        if not message.get("more_body", False):
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


def _replay(first: Message, receive: Receive) -> Receive:
    """The buffered body once, then the real channel (so a disconnect is still seen)."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
