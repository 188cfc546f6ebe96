"""M3: the dev key leaked. `/app-config.json` handed it to any Host, so a web page on any name that
resolves to 127.0.0.1 (DNS rebinding) could read it; and the key worked with dev mode off. Now: only a
loopback Host from a loopback client in dev mode gets it, and it is no key at all outside dev mode."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.services.api import running_service
from tests.services.attack_counts import count
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]

DEV_KEY = "dev-test-key-0123456789"


def _config(app, host: str, client: str) -> str | None:
    response = TestClient(app, client=(client, 50000)).get("/app-config.json", headers={"Host": host})
    count("cases tried")
    assert response.status_code == 200
    return response.json()["dev_api_key"]


def test_dev_key_only_for_a_loopback_page_in_dev_mode(fresh_pg_url, tmp_path):
    settings = local_settings(fresh_pg_url, tmp_path / "s", dev_mode=True, dev_api_key=DEV_KEY)
    with running_service(settings) as svc:
        app = svc.client.app
        assert _config(app, "attacker.example:8000", "127.0.0.1") is None  # DNS rebinding
        assert _config(app, "127.0.0.1.nip.io:8000", "127.0.0.1") is None
        assert _config(app, "localhost:8000", "192.0.2.10") is None  # someone else on the network
        assert _config(app, "127.0.0.1:8000", "127.0.0.1") == DEV_KEY
        assert _config(app, "localhost", "127.0.0.1") == DEV_KEY
        assert _config(app, "[::1]:8000", "::1") == DEV_KEY
        assert svc.client.get("/v1/edits", headers={"Authorization": f"Bearer {DEV_KEY}"}).status_code == 200


def test_dev_key_is_no_key_outside_dev_mode(fresh_pg_url, tmp_path):
    settings = local_settings(fresh_pg_url, tmp_path / "s", dev_mode=False, dev_api_key=DEV_KEY)
    with running_service(settings) as svc:
        assert _config(svc.client.app, "127.0.0.1:8000", "127.0.0.1") is None
        refused = svc.client.get("/v1/edits", headers={"Authorization": f"Bearer {DEV_KEY}"})
        count("cases tried")
        assert (refused.status_code, refused.json()["code"]) == (401, "unauthorized")
