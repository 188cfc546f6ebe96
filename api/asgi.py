"""What the API's ASGI layers share: reading a header the way every layer agrees on, and answering an
error before any route runs.

Headers are read as the *first* value of a name (Starlette's `Request.headers.get` does the same), never
through `dict(scope["headers"])`, whose last value wins: two layers reading one request differently is
how a second header used to slip past the limiter (docs/SECURITY.md, H2).
"""

from __future__ import annotations

import json

from starlette.types import Scope, Send

from common.errors import ApiError


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case bytes), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of header `name`, in order."""
    return [value for key, value in scope["headers"] if key == name]


def client_host(scope: Scope) -> str:
    """The client address as the proxy-header layer resolved it (see `api.main`)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


async def send_error(send: Send, error: ApiError) -> None:
    """Answer `{code, message}` with the error's status and headers."""
    await send_json(send, error.status, error.body(), error.headers)


async def send_json(send: Send, status: int, body: object, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
