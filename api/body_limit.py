"""Reject request bodies larger than a limit before they are read into memory or spooled to disk.

Checks `Content-Length` up front and counts streamed (chunked) bodies as they arrive, so a client
cannot fill the disk with an endless multipart upload.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import ApiError


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _reject(send, self.max_bytes)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the endpoint's body read, so the ApiError handler answers 413.
                    raise ApiError("payload_too_large", f"the request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _reject(send: Send, max_bytes: int) -> None:
    error = ApiError("payload_too_large", f"the request body exceeds {max_bytes} bytes")
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
