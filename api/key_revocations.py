"""Revocation at once on every API replica: a revoke publishes the key's hash on a Redis channel that each
API process listens to, and each drops the key from its cache of live keys (`api.auth.LiveKeys`) on receipt.

The cache's own lifetime, AUTH_CACHE_SECONDS, is then only the bound for when Redis is unreachable: a
listener that (re)connects forgets every remembered key, since it may have missed revocations meanwhile.
One listener thread per Redis URL per process, shared by every app the process builds (tests build many).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Protocol

from redis import Redis
from redis.exceptions import RedisError

from common.redis_client import redis_py_url

log = logging.getLogger(__name__)

CHANNEL = "faceedit:api-key-revoked"
_RECONNECT_S = (0.5, 5.0)  # first delay, longest delay


class Forgetting(Protocol):
    """What a listener tells: one key is revoked, or anything may have been (after a gap in listening)."""

    def forget(self, key_hash: str) -> None: ...
    def forget_all(self) -> None: ...


def _client(redis_url: str) -> Redis:
    # A health check pings an idle subscription, so a silently dead connection is noticed within seconds.
    return Redis.from_url(redis_py_url(redis_url), socket_timeout=5, socket_connect_timeout=2,
                          health_check_interval=5)


def announce(redis_url: str | None, key_hash: str) -> bool:
    """Tell every replica that `key_hash` is revoked; False (logged) when Redis is unreachable: the replicas
    then stop trusting the key within AUTH_CACHE_SECONDS."""
    if not redis_url:
        return False
    try:
        with _client(redis_url) as client:
            client.publish(CHANNEL, key_hash)
        return True
    except (RedisError, OSError) as error:
        log.warning("revocation not announced (%s): replicas stop trusting the key within AUTH_CACHE_SECONDS",
                    type(error).__name__)
        return False


class _Listener:
    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.caches: weakref.WeakSet = weakref.WeakSet()
        self.subscribed = threading.Event()  # set while a subscription is confirmed
        self.lock = threading.Lock()
        threading.Thread(target=self._run, name="key-revocations", daemon=True).start()

    def _tell(self, key_hash: str | None) -> None:
        with self.lock:
            caches = list(self.caches)
        for cache in caches:
            if key_hash is None:
                cache.forget_all()
            else:
                cache.forget(key_hash)

    def _run(self) -> None:
        delay = _RECONNECT_S[0]
        while True:
            try:
                self._listen()
            except (RedisError, OSError, ValueError) as error:
                if self.subscribed.is_set():
                    log.warning("key revocations: lost Redis (%s); cached keys now expire after AUTH_CACHE_SECONDS",
                                type(error).__name__)
                self.subscribed.clear()
            time.sleep(delay)
            delay = min(delay * 2, _RECONNECT_S[1])

    def _listen(self) -> None:
        with _client(self.redis_url) as client, client.pubsub() as pubsub:
            pubsub.subscribe(CHANNEL)
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self._tell(None)  # whatever was revoked while nobody listened
                    self.subscribed.set()
                elif message["type"] == "message":
                    self._tell(message["data"].decode("ascii", "replace"))


_listeners: dict[str, _Listener] = {}
_listeners_lock = threading.Lock()


def listen(redis_url: str, cache: Forgetting) -> threading.Event:
    """Have `cache` told of every revocation announced on `redis_url` (from now until it is garbage); the
    event is set while the subscription stands."""
    with _listeners_lock:
        listener = _listeners.get(redis_url)
        if listener is None:
            listener = _listeners[redis_url] = _Listener(redis_url)
    with listener.lock:
        listener.caches.add(cache)
    return listener.subscribed
