"""The API in process for tests: the app for a deployment's settings behind a TestClient, with a key.

- `Api`: the one client, one account's key sent on every call (`make_api`).
- `Service`: the same client with three accounts (alice, bob, a revoked key), a database session
  factory and the settings: what the attack tests (marker `trust`) drive (`running_service`).
- `wait_for_edit`: poll an edit over any HTTP client (TestClient or httpx) until it succeeded or failed.
- `asgi_request`: below the client, one request straight into the ASGI app with exact header bytes, a
  chosen client address and a body in counted chunks ("refused before a byte of the body was read").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.services import upload_files
from tests.services.attack_counts import count

# A valid one-change edit: what a test submits unless it is about the edit's fields.
GOOD_EDIT = {"neutral": "a face", "target": "a smiling face", "alphas": [0, 2], "beta": 0.15}


def wait_for_edit(client, edit_id: str, timeout_s: float = 240) -> dict:
    """The edit resource once it succeeded or failed (an AssertionError naming the last one after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while (edit := client.get(f"/v1/edits/{edit_id}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, edit
        time.sleep(0.2)
    return edit


class Api:
    """TestClient + a key: `api.post(...)` sends the bearer header."""

    def __init__(self, client, key: str):
        self.client, self.key = client, key
        self.headers = {"Authorization": f"Bearer {key}"}

    def __getattr__(self, method):
        call = getattr(self.client, method)

        def with_key(url, **kwargs):
            kwargs["headers"] = {**self.headers, **kwargs.get("headers", {})}
            return call(url, **kwargs)

        return with_key

    def exact(self, method: str, url: str, headers: dict[str, bytes], **kwargs):
        """A request whose header bytes reach the app as sent (the TestClient re-encodes a non-ASCII byte as
        UTF-8: b"\\xb2" would arrive as "Â²", not the "²" that a raw client such as curl can send)."""
        import httpx

        async def send():
            transport = httpx.ASGITransport(app=self.client.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await client.request(method, url, headers={**self.headers, **headers}, **kwargs)

        return asyncio.run(send())

    def upload(self, data: bytes, name: str = "face.jpg", content_type: str = "image/jpeg") -> dict:
        response = self.post("/v1/images", files={"file": (name, data, content_type)})
        assert response.status_code == 201, response.text
        return response.json()

    def wait(self, edit_id: str, timeout: float = 180, until=("succeeded", "failed", "canceled")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            edit = self.get(f"/v1/edits/{edit_id}").json()
            if edit["status"] in until:
                return edit
            time.sleep(0.1)
        raise TimeoutError(f"edit {edit_id} still {edit['status']} after {timeout}s")


def make_api(settings, name: str = "test") -> Api:
    """The app for `settings` behind a TestClient, with a new key for account `name`."""
    from fastapi.testclient import TestClient

    from api.keys import create_key
    from api.main import create_app

    app = create_app(settings)
    with app.state.session_factory() as session:
        _, key = create_key(session, name)
    return Api(TestClient(app), key)


class Service(Api):
    """The API in process with three accounts: `alice` (the key this `Api` sends), `bob` and `revoked`
    (revoked before the app starts). `auth(who)` gives another account's headers."""

    def __init__(self, client, settings, factory, keys: dict[str, str]):
        super().__init__(client, keys["alice"])
        self.settings, self.factory, self.keys = settings, factory, keys

    def auth(self, who: str = "alice", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}", **extra}

    def post_image(self, who: str = "alice", data: bytes | None = None, **headers: str):
        """`POST /v1/images` as `who` (a small valid JPEG unless `data`); the response, whatever it is."""
        photo = data if data is not None else upload_files.photo("JPEG", (128, 128))
        return self.client.post("/v1/images", files={"file": ("face.jpg", photo, "image/jpeg")},
                                headers=self.auth(who, **headers))

    def submit(self, image_id: str, who: str = "alice", **overrides):
        """`POST /v1/edits` of GOOD_EDIT (with `overrides`) as `who`; the response, whatever it is."""
        return self.client.post("/v1/edits", json={"image": image_id, **GOOD_EDIT, **overrides},
                                headers=self.auth(who))

    def queued(self) -> int:
        """Messages waiting on the edits queue."""
        import redis

        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            return client.llen(self.settings.edits_queue)
        finally:
            client.close()


@contextlib.contextmanager
def running_service(settings, owner_suffix: str = "", drop_queues: bool = True) -> Iterator[Service]:
    """The API for `settings` with keys for alice, bob and a revoked one. `owner_suffix` keeps the
    accounts apart in a database other tests share; `drop_queues=False` leaves shared queues alone."""
    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from api.keys import create_key, revoke_key
    from api.main import create_app
    from tests.services.settings import drop_queues as drop_private_queues

    engine = create_engine(settings.database_url)
    factory = sessionmaker(engine, expire_on_commit=False)
    keys: dict[str, str] = {}
    with factory() as session:
        for who in ("alice", "bob", "revoked"):
            row, keys[who] = create_key(session, who, owner=who + owner_suffix)
        revoke_key(session, row.id, redis_url=settings.redis_url)
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Service(client, settings, factory, keys)
    finally:
        app.state.engine.dispose()
        engine.dispose()
        if drop_queues:
            drop_private_queues(settings)


@dataclass
class AsgiAnswer:
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


def asgi_request(app, method: str, path: str, headers: list[tuple[str, str | bytes]] = (),
                 chunks: list[bytes] = (), client: tuple[str, int] = ("198.51.100.7", 40000),
                 content_length: bool = True) -> AsgiAnswer:  # fmt: skip
    """One request through `app`; the body arrives as `chunks` (chunked when `content_length` is False).
    Counted in the attack suite's closing counts (a case tried; a 5xx seen)."""
    raw = [(name.lower().encode(), value if isinstance(value, bytes) else value.encode()) for name, value in headers]
    if content_length and chunks:
        raw.append((b"content-length", str(sum(len(c) for c in chunks)).encode()))
    answer = asyncio.run(_asgi_call(app, method, path, raw, list(chunks), client))
    count("cases tried")
    if answer.status >= 500:
        count("5xx seen")
    return answer


async def _asgi_call(app, method, path, headers, chunks, client) -> AsgiAnswer:
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
    return AsgiAnswer(start["status"], names, body, read if chunks else 0)
