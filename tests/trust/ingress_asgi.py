"""Drive the API at the ASGI level for the ingress trust tests: exact headers (repeated ones, control
characters), a chosen client address, and a body in chunks whose reads are counted, so a test can say
"refused before a single byte of the body was read"."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from tests.trust.conftest import count


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks_read: int  # how many body chunks the app asked for

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        try:
            return self.json().get("code")
        except ValueError:
            return None


def call(app, method: str, path: str, headers: list[tuple[str, str | bytes]] = (), chunks: list[bytes] = (),
         client: tuple[str, int] = ("198.51.100.7", 40000), content_length: bool = True) -> Answer:
    """One request through `app`; the body arrives as `chunks` (chunked when `content_length` is False)."""
    raw = [(name.lower().encode(), value if isinstance(value, bytes) else value.encode()) for name, value in headers]
    if content_length and chunks:
        raw.append((b"content-length", str(sum(len(c) for c in chunks)).encode()))
    answer = asyncio.run(_call(app, method, path, raw, list(chunks), client))
    count("cases tried")
    if answer.status >= 500:
        count("5xx seen")
    return answer


async def _call(app, method, path, headers, chunks, client) -> Answer:
    pending = list(chunks) or [b""]
    read = 0
    messages: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        if pending:
            read += 1
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": client, "server": ("testserver", 80)}
    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    names = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return Answer(start["status"], names, body, read if chunks else 0)
