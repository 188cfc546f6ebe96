"""H1: nobody without a key makes the API read a body. The key is checked from the headers first (401
before a byte of the body is read, also with `Idempotency-Key`), JSON routes take 64 KiB (413, also
chunked), and failed keys are charged to the client address, so random tokens share one bucket."""

from __future__ import annotations

import io
import json
import os
import secrets
import uuid

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.services.api import asgi_request, running_service
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]

# The attack of the issue, scaled down: a JSON list far above the JSON limit.
BIG_ALPHAS = json.dumps({"alphas": [1.5] * 60_000}).encode()  # ~300 KiB


@pytest.fixture(scope="module")
def service(module_pg_url, tmp_path_factory):
    with running_service(local_settings(module_pg_url, tmp_path_factory.mktemp("storage"))) as svc:
        yield svc


def _address() -> tuple[str, int]:
    """A client address of its own, so the per-address buckets of other tests do not interfere."""
    return (f"198.18.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}", 40000)


def _junk() -> list[tuple[str, str]]:
    return [("authorization", "Bearer fe_" + secrets.token_urlsafe(32)), ("content-type", "application/json")]


def test_junk_key_and_malformed_body_get_401_without_reading_the_body(service):
    app = service.client.app
    answer = asgi_request(app, "POST", "/v1/edits", _junk(), [b"{not json", b"x" * 4096], client=_address())
    assert (answer.status, answer.code) == (401, "unauthorized")
    assert answer.chunks_read == 0
    answer = asgi_request(app, "POST", "/v1/edits", _junk(), [BIG_ALPHAS], client=_address())
    assert (answer.status, answer.chunks_read) == (401, 0)


def test_upload_with_idempotency_key_is_not_read_before_the_key_is_checked(service):
    headers = [*_junk()[:1], ("idempotency-key", "k-" + uuid.uuid4().hex),
               ("content-type", "multipart/form-data; boundary=xyz")]
    chunks = [b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n", b"\0" * 65536]
    answer = asgi_request(service.client.app, "POST", "/v1/images", headers, chunks, client=_address())
    assert (answer.status, answer.code, answer.chunks_read) == (401, "unauthorized", 0)


def test_json_routes_take_a_small_body(service):
    key = [("authorization", f"Bearer {service.keys['alice']}"), ("content-type", "application/json")]
    app = service.client.app
    declared = asgi_request(app, "POST", "/v1/edits", key, [BIG_ALPHAS], client=_address())
    assert (declared.status, declared.code) == (413, "payload_too_large")
    chunked = asgi_request(app, "POST", "/v1/edits", key, [BIG_ALPHAS[i:i + 8192] for i in range(0, len(BIG_ALPHAS), 8192)],
                   client=_address(), content_length=False)
    assert (chunked.status, chunked.code) == (413, "payload_too_large")
    assert chunked.chunks_read <= 64 * 1024 // 8192 + 1  # stopped at the limit, not read to the end
    # The photo routes keep the photo limit: a 270 KB photo goes through.
    noise = io.BytesIO()
    Image.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3)).save(noise, "PNG")
    assert len(noise.getvalue()) > 64 * 1024
    assert service.post_image(data=noise.getvalue()).status_code == 201


def test_random_tokens_share_the_address_bucket(module_pg_url, tmp_path):
    settings = local_settings(module_pg_url, tmp_path / "s", auth_failure_per_second=0.01, auth_failure_burst=3)
    with running_service(settings, owner_suffix="-" + uuid.uuid4().hex[:6]) as svc:
        client = TestClient(svc.client.app, client=_address())
        codes = []
        for _ in range(5):
            r = client.get("/v1/edits", headers={"Authorization": "Bearer fe_" + secrets.token_urlsafe(32)})
            codes.append((r.status_code, r.json()["code"]))
        assert codes[:3] == [(401, "unauthorized")] * 3
        assert codes[3:] == [(429, "rate_limited")] * 2
        assert int(r.headers["retry-after"]) >= 1
        # a valid key from the same address is not locked out
        assert client.get("/v1/edits", headers=svc.auth("alice")).status_code == 200
