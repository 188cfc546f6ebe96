"""Low: an idempotent replay needs a key that is valid now. The replay used to be answered before the
key was checked, so a revoked key still got its stored 201 (and the body was read for anyone). A replica
remembers a live key for AUTH_CACHE_SECONDS (api.auth.LiveKeys), so "now" is at most that long after the
revocation: here one second, waited out."""

from __future__ import annotations

import time

import pytest

from api.keys import create_key, revoke_key
from tests.services import upload_files
from tests.services.api import running_service
from tests.services.attack_counts import count
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]


def test_a_revoked_key_cannot_replay_its_stored_response(fresh_pg_url, tmp_path):
    cache_s = 1.0
    with running_service(local_settings(fresh_pg_url, tmp_path / "storage", auth_cache_seconds=cache_s)) as svc:
        with svc.factory() as session:
            row, key = create_key(session, "soon-revoked", owner="alice")
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "upload-1"}
        files = {"file": ("face.jpg", upload_files.photo("JPEG", (128, 128)), "image/jpeg")}
        stored = svc.client.post("/v1/images", files=files, headers=headers)
        replay = svc.client.post("/v1/images", files=files, headers=headers)
        assert (stored.status_code, replay.status_code) == (201, 201)
        assert replay.headers["idempotent-replayed"] == "true"
        with svc.factory() as session:
            assert revoke_key(session, row.id, redis_url=None)  # unannounced: the cache time bounds it
        time.sleep(cache_s + 0.1)  # the longest a replica may still trust the key it looked up
        after = svc.client.post("/v1/images", files=files, headers=headers)
        count("cases tried", 3)
        assert (after.status_code, after.json()["code"]) == (401, "unauthorized")
        assert "idempotent-replayed" not in after.headers
