"""One way to open a redis-py client on the broker URL, whatever form the URL takes.

The broker URL is Kombu's: the embedded development Redis listens on a unix socket, spelled
``redis+socket://PATH`` for Kombu and ``unix://PATH`` for redis-py.
"""

from __future__ import annotations

from redis import Redis

KOMBU_SOCKET = "redis+socket://"


def redis_py_url(url: str) -> str:
    """The broker URL in redis-py's spelling."""
    return "unix://" + url.removeprefix(KOMBU_SOCKET) if url.startswith(KOMBU_SOCKET) else url


def redis_client(url: str, timeout: float = 2.0) -> Redis:
    """A redis-py client on the broker URL, with connect and socket timeouts (a down Redis fails fast)."""
    return Redis.from_url(redis_py_url(url), socket_timeout=timeout, socket_connect_timeout=timeout)
