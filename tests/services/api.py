"""The API in process for tests: the app for a deployment's settings behind a TestClient, with a key."""

from __future__ import annotations

import time


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
        import asyncio

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
