"""Revocation at once on every replica (api/key_revocations.py): two API processes on one database and one
Redis, each caching live keys for a minute; a revoke from the CLI or from code stops the key on both within
a moment. With Redis unreachable, AUTH_CACHE_SECONDS is the bound (tests/api/test_auth.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from api.key_revocations import CHANNEL
from tests.services.api_process import ApiProcess
from tests.services.settings import REPO_ROOT, settings_env

pytestmark = pytest.mark.services

CACHE_S = 60.0  # the longest AUTH_CACHE_SECONDS: without the announcement the key would work for a minute
AT_ONCE_S = 2.0


def _subscribers(settings) -> int:
    from common.redis_client import redis_client

    with redis_client(settings.redis_url) as client:
        return dict(client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0)


def _statuses(replicas: list[ApiProcess], key: str) -> list[int]:
    return [httpx.get(f"{api.url}/v1/edits", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code
            for api in replicas]  # fmt: skip


def _until_refused(replicas: list[ApiProcess], key: str) -> tuple[list[int], float]:
    started = time.monotonic()
    while (statuses := _statuses(replicas, key)) != [401] * len(replicas) and time.monotonic() - started < AT_ONCE_S:
        time.sleep(0.05)
    return statuses, time.monotonic() - started


@pytest.fixture(scope="module")
def replicas(pg_url, redis_url, tmp_path_factory):
    from tests.services.settings import build_settings

    settings = build_settings(pg_url, redis_url, storage_dir=tmp_path_factory.mktemp("storage"),
                              auth_cache_seconds=CACHE_S)
    logs = tmp_path_factory.mktemp("replicas")
    before = _subscribers(settings)
    with ApiProcess(settings, logs / "a.log") as a, ApiProcess(settings, logs / "b.log") as b:
        for api in (a, b):  # the gate (and its listener) is built on a replica's first request
            httpx.get(f"{api.url}/v1/edits", timeout=10)
        deadline = time.monotonic() + 30
        while _subscribers(settings) < before + 2:
            assert time.monotonic() < deadline, "the replicas never subscribed"
            time.sleep(0.1)
        yield settings, [a, b]


def _new_key(settings) -> tuple[str, str]:
    from api.keys import create_key
    from common.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            row, key = create_key(session, "replicated")
            return row.id, key
    finally:
        engine.dispose()


def test_a_cli_revoke_stops_the_key_on_every_replica_at_once(replicas):
    settings, apis = replicas
    key_id, key = _new_key(settings)
    assert _statuses(apis, key) == [200, 200]  # now cached live on both, for a minute
    subprocess.run([sys.executable, "-m", "api", "keys", "revoke", key_id], cwd=REPO_ROOT, env=settings_env(settings),
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    statuses, took = _until_refused(apis, key)
    assert statuses == [401, 401], f"still {statuses} {took:.1f} s after the revoke (cache {CACHE_S:.0f} s)"


def test_a_revoke_from_code_stops_the_key_on_every_replica_at_once(replicas):
    from api.keys import revoke_key
    from common.db import make_engine, make_session_factory

    settings, apis = replicas
    key_id, key = _new_key(settings)
    assert _statuses(apis, key) == [200, 200]
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            assert revoke_key(session, key_id, redis_url=settings.redis_url)
    finally:
        engine.dispose()
    statuses, took = _until_refused(apis, key)
    assert statuses == [401, 401], f"still {statuses} {took:.1f} s after the revoke (cache {CACHE_S:.0f} s)"
    other_id, other = _new_key(settings)  # an announcement forgets one key, not the others
    assert _statuses(apis, other) == [200, 200]
