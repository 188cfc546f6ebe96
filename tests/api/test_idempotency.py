"""`Idempotency-Key` (api.idempotency) as a client on a flaky network meets it: against a real uvicorn
process, where an answer reaches the client the moment it is sent."""

from __future__ import annotations

import httpx
import pytest

from tests.services.api_process import ApiProcess

pytestmark = pytest.mark.services

RETRIES = 60  # the race lost about 3 times in 20 before the fix: 60 tries miss it with odds below 1 in 10^4


def _key(settings) -> str:
    from api.keys import create_key
    from common.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return create_key(session, "idempotency")[1]
    finally:
        engine.dispose()


def test_a_retry_right_after_the_answer_replays_it(queued_settings, tmp_path):
    """The answer used to leave before it was recorded: a retry sent on receiving it could find the key still
    in flight (409 idempotency_key_in_flight). Recorded first, then sent, every retry replays."""
    headers = {"Authorization": f"Bearer {_key(queued_settings)}"}
    outcomes = []
    with ApiProcess(queued_settings, tmp_path / "api.log") as api, httpx.Client(base_url=api.url, timeout=30) as client:
        for attempt in range(RETRIES):
            retry_headers = {**headers, "Idempotency-Key": f"slot-{attempt}"}
            first = client.post("/v1/uploads", headers=retry_headers)
            assert first.status_code == 201, first.text
            retry = client.post("/v1/uploads", headers=retry_headers)
            outcomes.append((retry.status_code, retry.headers.get("idempotent-replayed"), retry.json() == first.json()))
    assert outcomes == [(201, "true", True)] * RETRIES, api.log()[-2000:]
