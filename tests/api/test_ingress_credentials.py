"""H2: one reading of the credentials for every layer. A second `Authorization` header used to be read
by the limiter and idempotency (last value) while auth read the first, so an attacker paired a valid key
with random ones and escaped the per-key limits. Anything two parsers could read differently is now
refused: 401 `ambiguous_credentials`."""

from __future__ import annotations

import secrets
import uuid

import pytest

from tests.services.api import asgi_request, running_service
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]


@pytest.fixture(scope="module")
def service(module_pg_url, tmp_path_factory):
    settings = local_settings(module_pg_url, tmp_path_factory.mktemp("storage"), rate_limit_per_second=0.01,
                              rate_limit_burst=3)
    with running_service(settings, owner_suffix="-" + uuid.uuid4().hex[:6]) as svc:
        yield svc


def _client() -> tuple[str, int]:
    return (f"198.19.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}", 40000)


def test_a_second_authorization_header_does_not_escape_the_key_limit(service):
    alice = f"Bearer {service.keys['alice']}"
    statuses = []
    for i in range(10):
        other = "Bearer fe_" + secrets.token_urlsafe(32)
        pair = [("authorization", alice), ("authorization", other)] if i % 2 else [("authorization", other),
                                                                                 ("authorization", alice)]
        answer = asgi_request(service.client.app, "GET", "/v1/edits", pair, client=_client())
        statuses.append((answer.status, answer.code))
    assert all(status == (401, "ambiguous_credentials") for status in statuses), statuses
    # and the key's own bucket (burst 3) holds
    alone = [asgi_request(service.client.app, "GET", "/v1/edits", [("authorization", alice)]).status for _ in range(4)]
    assert alone == [200, 200, 200, 429]


@pytest.mark.parametrize("value", [
    b"Token fe_abcdefabcdef",  # a key under another scheme
    b"fe_abcdefabcdef",  # a key with no scheme
    b"Bearer fe_abc fe_def",  # two tokens
    b'Bearer "fe_abcdef"',  # quoted
    b"Bearer fe_abc,Bearer fe_def",  # a folded list
    b"Bearer fe_abc\x01",  # control character
    b"Bearer fe_abc\tdef",  # tab inside
    "Bearer fe_abcé".encode(),  # non-ASCII
])
def test_ambiguous_credentials_are_refused(service, value):
    answer = asgi_request(service.client.app, "GET", "/v1/edits", [("authorization", value)], client=_client())
    assert (answer.status, answer.code) == (401, "ambiguous_credentials"), answer.body
    assert answer.headers.get("www-authenticate") == "Bearer"


def test_plain_other_schemes_and_empty_bearer_are_just_unauthorized(service):
    for value in ("Basic YWxpY2U6cHc=", "Bearer", "Bearer    ", "Bearer " + "A" * 8000):
        answer = asgi_request(service.client.app, "GET", "/v1/edits", [("authorization", value)], client=_client())
        assert (answer.status, answer.code) == (401, "unauthorized"), value[:20]
