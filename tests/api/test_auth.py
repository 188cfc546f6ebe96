"""The API key cache (`api.auth.LiveKeys`, AUTH_CACHE_SECONDS): how long a revoked key can still work, and
that an attacker cannot stretch that, fill the cache, or get a failure remembered (the revoked-key replay
through a real service: test_ingress_idempotent_replay.py)."""

from __future__ import annotations

import pytest

from api.auth import LiveKeys

pytestmark = pytest.mark.trust


def _cache(ttl_s: float, max_keys: int = 10_000):
    now = [0.0]
    return LiveKeys(ttl_s, max_keys=max_keys, clock=lambda: now[0]), now


def test_a_key_is_trusted_for_the_ttl_from_its_lookup_however_often_it_is_used():
    keys, now = _cache(5.0)
    keys.put("h", "alice")
    for t in (0.0, 1.0, 2.5, 4.9):  # steady use does not extend the entry: revocation still lands at 5 s
        now[0] = t
        assert keys.get("h") == "alice"
    now[0] = 5.0
    assert keys.get("h") is None


def test_zero_ttl_remembers_nothing():
    keys, _ = _cache(0.0)
    keys.put("h", "alice")
    assert keys.get("h") is None


def test_the_cache_is_bounded_least_recently_used_first():
    keys, _ = _cache(60.0, max_keys=3)
    for name in ("a", "b", "c"):
        keys.put(name, name)
    assert keys.get("a") == "a"  # a used: b is now the oldest
    keys.put("d", "d")
    assert [keys.get(name) for name in ("a", "b", "c", "d")] == ["a", None, "c", "d"]


def test_failures_are_not_remembered_so_a_new_key_works_at_once(tmp_path):
    from api.auth import AuthGate
    from api.keys import create_key, hash_key
    from common.db import make_engine, make_session_factory, upgrade
    from common.settings import Settings

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    gate = AuthGate(None, Settings(database_url=url, auth_cache_seconds=60), factory, limiter=None)
    with factory() as session:
        _, key = create_key(session, "k", owner="alice")
    with engine.begin() as connection:  # the key is not there yet at the first lookup
        connection.exec_driver_sql("UPDATE api_keys SET key_hash = 'hidden'")
    assert gate.resolve(hash_key(key)) is None and gate.remembered(hash_key(key)) is None
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE api_keys SET key_hash = ?", (hash_key(key),))
    assert gate.resolve(hash_key(key)).owner == "alice"  # the failure above was not cached
    assert gate.remembered(hash_key(key)).owner == "alice"
    engine.dispose()
