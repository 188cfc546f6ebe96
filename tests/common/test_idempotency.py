"""Idempotency-key store against real PostgreSQL (migrated by Alembic), including concurrent claims."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from common import idempotency as idem

pytestmark = [pytest.mark.trust, pytest.mark.services]


@pytest.fixture(scope="module")
def sessions(module_pg_url):
    engine = create_engine(module_pg_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def test_parse_key():
    assert idem.parse_key('"abc-123"') == "abc-123"
    assert idem.parse_key(" token ") == "token"
    for bad in ("", '""', "x" * 256, "caf\u00e9", "a\x00b"):
        with pytest.raises(idem.InvalidKey):
            idem.parse_key(bad)


def test_fingerprint_ignores_multipart_boundary_only():
    body = b"--B1\r\ncontent\r\n--B1--"
    other = b"--B2\r\ncontent\r\n--B2--"
    a = idem.fingerprint("POST", "/v1/images", "", "multipart/form-data; boundary=B1", body)
    b = idem.fingerprint("POST", "/v1/images", "", "multipart/form-data; boundary=B2", other)
    assert a == b
    assert a != idem.fingerprint("POST", "/v1/images", "", "multipart/form-data; boundary=B2", other + b"x")
    assert a != idem.fingerprint("POST", "/v1/edits", "", "multipart/form-data; boundary=B1", body)


def test_lifecycle_proceed_conflict_replay_mismatch(sessions):
    with sessions() as s:
        assert idem.begin(s, "lifecycle_proceed_co", "k1", "fp").outcome is idem.Outcome.PROCEED
        assert idem.begin(s, "lifecycle_proceed_co", "k1", "fp").outcome is idem.Outcome.IN_FLIGHT
        assert idem.begin(s, "lifecycle_proceed_co", "k1", "other").outcome is idem.Outcome.MISMATCH
        assert idem.begin(s, "other-scope", "k1", "other").outcome is idem.Outcome.PROCEED  # scoped per caller
        idem.complete(s, "lifecycle_proceed_co", "k1", 201, {"content-type": "application/json"}, b'{"id":"x"}')
        replay = idem.begin(s, "lifecycle_proceed_co", "k1", "fp")
        assert (replay.outcome, replay.status, replay.body) == (idem.Outcome.REPLAY, 201, b'{"id":"x"}')
        assert idem.begin(s, "lifecycle_proceed_co", "k1", "other").outcome is idem.Outcome.MISMATCH


def test_release_lets_a_retry_run(sessions):
    with sessions() as s:
        assert idem.begin(s, "release_lets_a_retry", "k", "fp").outcome is idem.Outcome.PROCEED
        idem.release(s, "release_lets_a_retry", "k")
        assert idem.begin(s, "release_lets_a_retry", "k", "fp2").outcome is idem.Outcome.PROCEED


def test_expired_keys_are_forgotten_and_purged(sessions):
    with sessions() as s:
        idem.begin(s, "expired_keys_are_for", "old", "fp", ttl=timedelta(seconds=-1))
        idem.begin(s, "expired_keys_are_for", "new", "fp")
        assert idem.purge_expired(s) == 1
        idem.begin(s, "expired_keys_are_for", "old2", "fp", ttl=timedelta(seconds=-1))
        assert idem.begin(s, "expired_keys_are_for", "old2", "different").outcome is idem.Outcome.PROCEED


def test_stale_in_flight_key_is_taken_over(sessions):
    with sessions() as s:
        idem.begin(s, "stale_in_flight_key_", "k", "fp", lock=timedelta(seconds=-1))  # its API process died
        assert idem.begin(s, "stale_in_flight_key_", "k", "fp").outcome is idem.Outcome.PROCEED
        assert idem.begin(s, "stale_in_flight_key_", "k", "fp").outcome is idem.Outcome.IN_FLIGHT


def test_concurrent_first_requests_exactly_one_proceeds(sessions):
    def attempt(_):
        with sessions() as s:
            return idem.begin(s, "concurrent_first_req", "race", "fp").outcome

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(16)))
    assert outcomes.count(idem.Outcome.PROCEED) == 1
    assert outcomes.count(idem.Outcome.IN_FLIGHT) == 15
