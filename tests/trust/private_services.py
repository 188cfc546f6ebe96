"""Private Redis and PostgreSQL servers for the fault tests, which restart them: the session's services
other tests use are never touched. The same embedded servers the session starts when none is
configured (tests/services/): a missing binary fails the test, saying how to get it."""

from __future__ import annotations

from tests.services.postgres import EmbeddedPostgres, PostgresUnavailable
from tests.services.provision import missing
from tests.services.redis import EmbeddedRedis, RedisUnavailable


class PrivateRedis(EmbeddedRedis):
    """`redis-server` on a free port; `persistent=False` empties it on restart (the CI configuration)."""

    def __init__(self, persistent: bool = False):
        try:
            super().__init__(persistent=persistent)
        except RedisUnavailable as error:
            missing(f"redis: {error}")


class PrivatePostgres(EmbeddedPostgres):
    """A throwaway cluster on a free port; `stop()` is a crash, `restart()` a crash and recovery."""

    def __init__(self):
        try:
            super().__init__()
        except PostgresUnavailable as error:
            missing(f"postgresql: {error}")

    def start(self, timeout: float = 60) -> PrivatePostgres:
        try:
            super().start(timeout)
        except PostgresUnavailable as error:
            self.close()
            missing(f"postgresql: {error}")
        return self
