"""H1 (addresses): requests without a valid key are limited per client address, so that address must
not be the client's to choose. `X-Forwarded-For` counts only from FORWARDED_ALLOW_IPS (default
127.0.0.1); the images used to run uvicorn with `--forwarded-allow-ips *`, which believes anyone (the
images: tests/infra/test_forwarded_allow_ips.py)."""

from __future__ import annotations

import secrets
import uuid

import pytest
from fastapi.testclient import TestClient

from tests.services.api import running_service
from tests.services.attack_counts import count
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]

PROXY = "192.0.2.1"


def _address() -> str:
    """A random address: buckets outlive a test run in Redis, so a rerun must not meet its own."""
    return "10." + ".".join(str(secrets.randbelow(256)) for _ in range(3))


def _failures(app, peer: str, forwarded: list[str]) -> list[int]:
    client = TestClient(app, client=(peer, 40000))
    statuses = []
    for address in forwarded:
        r = client.get("/v1/edits", headers={"Authorization": "Bearer fe_" + secrets.token_urlsafe(16),
                                             "X-Forwarded-For": address})
        count("cases tried")
        statuses.append(r.status_code)
    return statuses


def test_forwarded_for_counts_only_from_a_configured_proxy(fresh_pg_url, tmp_path):
    tight = dict(auth_failure_per_second=0.01, auth_failure_burst=2)
    spoofed = [_address() for _ in range(4)]
    settings = local_settings(fresh_pg_url, tmp_path / "a", **tight)
    with running_service(settings, owner_suffix="-" + uuid.uuid4().hex[:6]) as svc:
        # a client that is not a proxy cannot get a fresh bucket by naming another address
        assert _failures(svc.client.app, _address(), spoofed) == [401, 401, 429, 429]
    proxied = dict(tight, forwarded_allow_ips=PROXY)
    with running_service(local_settings(fresh_pg_url, tmp_path / "b", **proxied),
                         owner_suffix="-" + uuid.uuid4().hex[:6]) as svc:
        # behind the configured proxy, each real client has its own bucket
        fresh = [_address()] * 2 + [_address()] * 2
        assert _failures(svc.client.app, PROXY, fresh) == [401, 401, 401, 401]
