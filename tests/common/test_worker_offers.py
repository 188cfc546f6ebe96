"""common/worker_offers.py: the live workers' offer in Redis (issue 22): a mixed fleet offers what all its workers
have, expired and bogus fields count for nothing, the reader caches and survives a Redis that does not answer,
and the publisher publishes only what a live worker with a loaded bundle has."""

from __future__ import annotations

import json
import uuid

import pytest
from redis import Redis

from common.worker_offers import (
    MAX_WORKERS,
    FleetOffers,
    OffersPublisher,
    OffersReader,
    fleet_offers,
    offers_key,
    parse_field,
    publish,
    read_offers,
    withdraw,
)

pytestmark = pytest.mark.services

NOW = 1_000_000.0


@pytest.fixture
def redis(redis_url):
    with Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def queue(redis):
    name = f"edits-offers-{uuid.uuid4().hex[:8]}"
    yield name
    redis.delete(offers_key(name))


def _field(inversions, expires_at) -> bytes:
    return json.dumps({"inversions": inversions, "expires_at": expires_at}).encode()


def test_one_worker_offers_what_its_bundle_has(redis, queue):
    publish(redis, queue, "w1", ["sfe", "e4e"], ttl=30)
    offers = read_offers(redis, queue)
    assert offers == FleetOffers(1, frozenset({"e4e", "sfe"}), frozenset({"e4e", "sfe"}))
    assert offers.offered() == ["e4e", "sfe"] and offers.refusal("sfe") is None
    assert 0 < redis.ttl(offers_key(queue)) <= 30  # the hash expires with its last publisher


def test_a_mixed_fleet_offers_only_what_every_worker_has(redis, queue):
    publish(redis, queue, "w1", ["e4e", "sfe"], ttl=30)
    publish(redis, queue, "w2", ["e4e"], ttl=30)
    offers = read_offers(redis, queue)
    assert offers.workers == 2 and offers.offered() == ["e4e"] and offers.somewhere == {"e4e", "sfe"}
    assert "mixed fleet" in offers.refusal("sfe") and offers.refusal("e4e") is None
    withdraw(redis, queue, "w2")  # the worker without SFE shuts down
    assert read_offers(redis, queue).offered() == ["e4e", "sfe"]


def test_no_worker_and_another_fleet_are_unknown(redis, queue):
    assert read_offers(redis, queue) is None
    publish(redis, queue + "-other", "w1", ["e4e", "sfe"], ttl=30)  # another deployment's queue
    try:
        assert read_offers(redis, queue) is None
    finally:
        redis.delete(offers_key(queue + "-other"))


def test_an_expired_field_counts_for_nothing_and_the_next_publisher_deletes_it(redis, queue):
    seconds, _ = redis.time()
    redis.hset(offers_key(queue), "dead", _field(["e4e"], seconds - 5))
    assert read_offers(redis, queue) is None  # a dead worker is no fleet
    publish(redis, queue, "w1", ["e4e", "sfe"], ttl=30)
    assert read_offers(redis, queue).offered() == ["e4e", "sfe"]  # the dead one without SFE does not count
    assert redis.hkeys(offers_key(queue)) == [b"w1"]


@pytest.mark.parametrize("raw", [
    b"not json", b"\xff\xfe", b"[]", b'"sfe"', b"null", json.dumps({"inversions": ["sfe"]}).encode(),
    _field(["sfe"], "soon"), _field(["sfe"], True), _field(["sfe"], float("nan")), _field(["sfe"], NOW - 1),
    _field(["sfe"], NOW + 10 * 86400),  # far ahead: it would pin the offer for ever
    _field("sfe", NOW + 10), _field([1, 2], NOW + 10), _field(None, NOW + 10),
    _field(["sfe" * 400], NOW + 10),  # longer than any field of ours
])  # fmt: skip
def test_bogus_fields_are_ignored(raw):
    assert parse_field(raw, NOW) is None
    assert fleet_offers({b"bogus": raw}, NOW) is None
    good = fleet_offers({b"bogus": raw, b"w1": _field(["e4e"], NOW + 10)}, NOW)
    assert good.workers == 1 and good.offered() == ["e4e"]  # a bogus field neither counts nor vetoes


def test_unknown_inversions_are_dropped_and_none_is_an_offer_of_nothing():
    assert parse_field(_field(["psp", "sfe", "sfe"], NOW + 10), NOW) == ("sfe",)
    offers = fleet_offers({b"w1": _field([], NOW + 10), b"w2": _field(["e4e", "sfe"], NOW + 10)}, NOW)
    assert offers.workers == 2 and offers.offered() == [] and "none" in offers.refusal("e4e")


def test_a_hash_with_more_fields_than_any_fleet_is_unknown(redis, queue):
    seconds, _ = redis.time()
    redis.hset(offers_key(queue), mapping={f"w{i}": _field(["e4e"], seconds + 30) for i in range(MAX_WORKERS + 1)})
    assert read_offers(redis, queue) is None


def test_the_reader_caches_and_treats_an_unreachable_redis_as_unknown(redis, queue):
    now = [0.0]
    reader = OffersReader(redis, queue, cache_seconds=2.0, clock=lambda: now[0])
    assert reader.get() is None
    publish(redis, queue, "w1", ["e4e"], ttl=30)
    assert reader.get() is None  # cached
    now[0] = 2.5
    assert reader.get().offered() == ["e4e"]
    down = OffersReader(Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), queue, cache_seconds=0)
    assert down.get() is None


def test_the_publisher_publishes_a_loaded_bundle_of_a_live_worker_only(redis, queue):
    state = {"offer": None, "alive": True}
    publisher = OffersPublisher(redis, queue, lambda: state["offer"], lambda: state["alive"], every=60, ttl=30,
                                worker="w1")
    assert not publisher.refresh() and read_offers(redis, queue) is None  # no bundle loaded yet
    state.update(offer=("e4e",), alive=False)
    assert not publisher.refresh() and read_offers(redis, queue) is None  # not consuming: let it expire
    state["alive"] = True
    assert publisher.refresh() and read_offers(redis, queue).offered() == ["e4e"]
    publisher.start()
    publisher.stop()  # shutting down withdraws the offer
    assert read_offers(redis, queue) is None


def test_a_publisher_survives_an_unreachable_redis(queue):
    down = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    publisher = OffersPublisher(down, queue, lambda: ("e4e",), lambda: True, every=60, ttl=30, worker="w1")
    assert not publisher.refresh()
