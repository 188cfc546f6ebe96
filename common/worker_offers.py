"""What the live edit workers offer: the inversions their loaded model bundle can run (`Editor.inversions`).

The API has no models, so it cannot see whether the bundle has StyleFeatureEditor; the workers say it. Each
model worker publishes its offer to Redis (the broker) while it lives, and the API and the workers read the
fleet's offer from there:

* one Redis hash per edit queue (`offers_key`: the fleet is whoever consumes that queue), one field per worker
  process, its value `{"inversions": [...], "expires_at": t}` with `t` on Redis' own clock (`TIME`), so the
  hosts' clocks never matter;
* a worker refreshes its field every LIVENESS_PING_SECONDS while its liveness check passes (it consumes
  messages: `worker/liveness.py`) and for at most LIVENESS_STALE_SECONDS past the last refresh; a worker that
  dies, hangs or stops consuming drops out when its field expires, and one that shuts down withdraws it;
  every publisher deletes the expired fields it sees, and the hash itself expires with its last publisher;
* a reader keeps only well-formed, unexpired fields whose expiry is not further than the longest TTL ahead
  (a bogus field cannot pin an offer for ever), names only inversions the contract knows, and caches the
  answer for a couple of seconds per process (a submit costs no Redis round trip most of the time).

A mixed fleet (some workers with SFE, some without: a rollout): an inversion is *offered* only when every live
worker offers it (`FleetOffers.everywhere`), because any worker may take the next job from the shared queue.
So the app shows the likeness switch, and `POST /v1/edits` accepts `"inversion": "sfe"`, once the whole fleet
has SFE, and the deployment default `auto` resolves the same way on every worker. No worker published yet
(the fleet is starting, or Redis does not answer): nothing is known, and the edit is accepted as before (a
worker without the model fails it `model_missing`, saying how to add it).

Framework-free apart from redis-py: the API, the workers and the tests import it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError

from common.edit_contract import INVERSIONS

log = logging.getLogger(__name__)

KEY_PREFIX = "faceedit:worker-offers:"
MAX_WORKERS = 1024  # fields a reader parses; a hash with more is not a fleet of ours (unknown, logged)
MAX_FIELD_BYTES = 1024  # a value longer than this is not an offer of ours
MAX_TTL_SECONDS = 3600.0  # an expiry further ahead than this is bogus (the workers publish LIVENESS_STALE_SECONDS)
CACHE_SECONDS = 2.0  # how long a process reuses the fleet's offer it last read


def offers_key(edits_queue: str) -> str:
    """The Redis hash of the workers consuming `edits_queue` (one deployment's fleet)."""
    return KEY_PREFIX + edits_queue


def worker_id() -> str:
    """This worker process's field name: host and process id (unique while it lives)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class FleetOffers:
    """The live workers' offer: how many there are, the inversions every one of them offers, and those some do."""

    workers: int
    everywhere: frozenset[str]
    somewhere: frozenset[str]

    def offered(self) -> list[str]:
        """The inversions an edit may ask for here, in the contract's order."""
        return [name for name in INVERSIONS if name in self.everywhere]

    def refusal(self, inversion: str) -> str | None:
        """Why an edit asking for `inversion` cannot be served by this fleet, or None when it can."""
        if inversion in self.everywhere:
            return None
        label = "StyleFeatureEditor (sfe)" if inversion == "sfe" else inversion
        offered = ", ".join(self.offered()) or "none"
        if inversion in self.somewhere:
            return (f"inversion {inversion!r} is not offered by every live edit worker (a mixed fleet: any of the "
                    f"{self.workers} may take the job, and not all have {label}'s model); offered here: {offered}. "
                    "Ask again without `inversion` or with one offered")
        return (f"inversion {inversion!r} is not offered here: none of the {self.workers} live edit worker(s) has "
                f"{label}'s model; offered here: {offered}. Ask again without `inversion` or with one offered")


def parse_field(raw: bytes | str, now: float) -> tuple[str, ...] | None:
    """The inversions of one worker's field, or None when it is malformed, too long, expired or expires
    implausibly far ahead. Unknown inversion names are dropped (a newer worker may offer more)."""
    if len(raw) > MAX_FIELD_BYTES:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    expires, inversions = value.get("expires_at"), value.get("inversions")
    if isinstance(expires, bool) or not isinstance(expires, int | float) or not math.isfinite(expires):
        return None
    if not now < expires <= now + MAX_TTL_SECONDS:
        return None
    if not isinstance(inversions, list) or not all(isinstance(name, str) for name in inversions):
        return None
    return tuple(name for name in INVERSIONS if name in inversions)


def fleet_offers(fields: dict, now: float) -> FleetOffers | None:
    """The fleet's offer from the hash's fields (`HGETALL`), or None when no field is live."""
    live = [parsed for raw in fields.values() if (parsed := parse_field(raw, now)) is not None]
    if not live:
        return None
    return FleetOffers(workers=len(live), everywhere=frozenset.intersection(*map(frozenset, live)),
                       somewhere=frozenset().union(*live))


def _server_time(client: Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def read_offers(client: Redis, edits_queue: str) -> FleetOffers | None:
    """The live workers' offer now (two round trips), or None when none is live or there are too many fields to
    be ours. RedisError propagates (the caller decides: `OffersReader` treats it as unknown)."""
    key = offers_key(edits_queue)
    with client.pipeline(transaction=False) as pipe:
        now, size = pipe.time().hlen(key).execute()
    if size > MAX_WORKERS:
        log.warning("%s has %d fields (at most %d expected): the fleet's offer is ignored", key, size, MAX_WORKERS)
        return None
    if size == 0:
        return None
    return fleet_offers(client.hgetall(key), now[0] + now[1] / 1e6)


def publish(client: Redis, edits_queue: str, worker: str, inversions: Collection[str], ttl: float) -> None:
    """Set `worker`'s offer for `ttl` seconds, delete the fields that expired, keep the hash alive as long."""
    key = offers_key(edits_queue)
    now = _server_time(client)
    stale = [name for name, raw in client.hgetall(key).items() if parse_field(raw, now) is None]
    value = json.dumps({"inversions": [name for name in INVERSIONS if name in inversions],
                        "expires_at": round(now + ttl, 3)})
    with client.pipeline(transaction=True) as pipe:
        if stale:
            pipe.hdel(key, *stale)
        pipe.hset(key, worker, value)
        pipe.expire(key, max(1, math.ceil(ttl)))
        pipe.execute()


def withdraw(client: Redis, edits_queue: str, worker: str) -> None:
    """Remove `worker`'s offer (it is shutting down)."""
    client.hdel(offers_key(edits_queue), worker)


class OffersReader:
    """The fleet's offer as this process last read it (`CACHE_SECONDS`); None while unknown, also when Redis
    does not answer (the edit is then accepted as before: the worker's own check decides)."""

    def __init__(self, client: Redis, edits_queue: str, cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.client, self.edits_queue, self.cache_seconds, self.clock = client, edits_queue, cache_seconds, clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._offers: FleetOffers | None = None

    def get(self) -> FleetOffers | None:
        with self._lock:
            if self._read_at is not None and self.clock() - self._read_at < self.cache_seconds:
                return self._offers
            try:
                self._offers = read_offers(self.client, self.edits_queue)
            except (RedisError, OSError) as error:
                log.warning("the workers' offers could not be read: %s", error)
                self._offers = None
            self._read_at = self.clock()
            return self._offers


class OffersPublisher(threading.Thread):
    """A worker's thread that keeps its offer published: every `every` seconds, `offer()` (the inversions of
    the loaded bundle, or None while no bundle is loaded) is published for `ttl` seconds when `alive()` (its
    liveness check passes); otherwise nothing is refreshed and the field expires. `stop()` withdraws it."""

    def __init__(self, client: Redis, edits_queue: str, offer: Callable[[], Collection[str] | None],
                 alive: Callable[[], bool], every: float, ttl: float, worker: str | None = None):
        super().__init__(name="worker-offers", daemon=True)
        self.client, self.edits_queue, self.offer, self.alive = client, edits_queue, offer, alive
        self.every, self.ttl, self.worker = every, ttl, worker or worker_id()
        self.stopped = threading.Event()

    def refresh(self) -> bool:
        """Publish once if there is something to offer and the worker is alive; True when published."""
        inversions = self.offer()
        if inversions is None or not self.alive():
            return False
        try:
            publish(self.client, self.edits_queue, self.worker, inversions, self.ttl)
        except (RedisError, OSError) as error:  # a broker outage must not kill the thread; the field expires
            log.warning("the worker's offer could not be published: %s", error)
            return False
        return True

    def run(self) -> None:
        while True:
            self.refresh()
            if self.stopped.wait(self.every):
                return

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)
        try:
            withdraw(self.client, self.edits_queue, self.worker)
        except (RedisError, OSError) as error:
            log.warning("the worker's offer could not be withdrawn (it expires by itself): %s", error)
