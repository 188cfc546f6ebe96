"""The API under load (issue #16 §3): 16 users at once against one uvicorn process on a real PostgreSQL and Redis.

Each user has its own API key and photo and submits edits back to back (`POST /v1/edits`), then lists its
newest five (`GET /v1/edits?limit=5`); `/healthz` gives the ceiling of this stack. No worker runs, so the
submitted edits stay queued and the queue caps count a growing queue, as on a busy day.

With `--api-baseline REV` the same rounds run against the tree of git revision REV too (exported to a
temporary folder, its own uvicorn and its own database), alternating round by round, so before/after come from
the same run under the same background load. The PostgreSQL is TEST_DATABASE_URL's server (a private database
per tree, dropped afterwards: `tests/services/postgres.private_database`); the Redis is TEST_REDIS_URL's, on
private queue names that are deleted afterwards. Where either does not answer, an embedded one is started for
the run, as the test suite does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from api.processes import stop_process
from bench.load import json_request, run_load
from bench.machine import REPO_ROOT

DEFAULT_PG = "postgresql+psycopg://faceedit:faceedit@127.0.0.1:5432/faceedit_test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
UVICORN_FLAGS = ["--http", "httptools", "--loop", "uvloop"]


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] api-load: {message}", file=sys.stderr, flush=True)


@contextmanager
def _tree(revision: str | None) -> Iterator[Path]:
    """This checkout, or the files of `revision` in a temporary folder."""
    if revision is None:
        yield REPO_ROOT
        return
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", revision], check=True,
                                 capture_output=True, timeout=60).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


@contextmanager
def _server(tree: Path, settings, port: int, tmp: Path) -> Iterator[int]:
    """One uvicorn process (the production shape) serving `tree`'s code with `settings`."""
    import httpx

    from tests.services.settings import settings_env

    env = {**settings_env(settings), "PYTHONPATH": str(tree)}
    log_file = (tmp / f"uvicorn-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
         "--port", str(port), *UVICORN_FLAGS], cwd=tree, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start: {(tmp / f'uvicorn-{port}.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield process.pid
    finally:
        stop_process(process, timeout=15)
        log_file.close()


class Deployment:
    """One tree served on its own database and queues, with `users` keys that each uploaded a photo."""

    def __init__(self, stack: ExitStack, name: str, revision: str | None, photo: bytes, users: int, tmp: Path,
                 pg: str, redis_url: str):
        from api.keys import create_key
        from api.processes import free_port
        from common.db import make_engine, make_session_factory
        from tests.services.postgres import private_database
        from tests.services.settings import build_settings, drop_queues

        self.name = name
        database = stack.enter_context(private_database(pg, prefix="bench_load"))
        self.settings = build_settings(
            database, redis_url, storage_dir=tmp / f"storage-{name}", tag="bench", log_level="INFO", log_format="json",
            rate_limit_per_second=1e6, rate_limit_burst=10**6, submit_rate_per_second=1e6, submit_rate_burst=10**6,
            max_queued_per_owner=10**6, max_queued_total=10**7)  # fmt: skip
        stack.callback(drop_queues, self.settings)
        engine = make_engine(database)
        stack.callback(engine.dispose)
        with make_session_factory(engine)() as session:
            self.keys = [create_key(session, f"user{i}")[1] for i in range(users)]
        self.port = free_port()
        self.pid = stack.enter_context(_server(stack.enter_context(_tree(revision)), self.settings, self.port, tmp))
        self.images = [self._upload(key, photo) for key in self.keys]

    def _upload(self, key: str, photo: bytes) -> str:
        import httpx

        response = httpx.post(f"http://127.0.0.1:{self.port}/v1/images", headers={"Authorization": f"Bearer {key}"},
                              files={"file": ("face.png", photo, "image/png")}, timeout=30)
        if response.status_code != 201:
            raise RuntimeError(f"{self.name}: image upload failed: {response.status_code} {response.text}")
        return response.json()["id"]

    def submit_users(self):
        def user(key: str, image: str):
            body = {"image": image, "neutral": "a face", "target": "a face with a beard", "alphas": [-2, 0, 2]}
            request = json_request("POST", "/v1/edits", key, body)
            return lambda _i: request
        return [user(k, i) for k, i in zip(self.keys, self.images, strict=True)]

    def list_users(self):
        return [(lambda r: lambda _i: r)(json_request("GET", "/v1/edits?limit=5", k)) for k in self.keys]

    def health_users(self):
        return [(lambda r: lambda _i: r)(json_request("GET", "/healthz", k)) for k in self.keys]


def bench_api_load(photo: bytes, users: int = 16, seconds: float = 6.0, rounds: int = 2,
                   baseline: str | None = None) -> dict[str, object]:
    """Per tree ("current", and "baseline" when asked): submits/s and p50/p99 ms for each round of each kind of
    request, the 1-minute load average when each round started, and the medians over rounds."""
    result: dict[str, object] = {"users": users, "seconds_per_round": seconds, "rounds": rounds,
                                 "baseline": baseline, "load_average_1m_start": round(os.getloadavg()[0], 2)}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-load-")))
        names = ["current"] + (["baseline"] if baseline else [])
        pg, redis_url = _services(stack)
        deployments = [Deployment(stack, name, None if name == "current" else baseline, photo, users, tmp, pg,
                                  redis_url) for name in names]
        rounds_out: dict[str, list[dict]] = {d.name: [] for d in deployments}
        others = OtherProcesses(deployments[0].settings)  # one PostgreSQL and one Redis serve both trees
        for round_index in range(rounds):
            for deployment in deployments if round_index % 2 == 0 else deployments[::-1]:
                row = {"load_average_1m": round(os.getloadavg()[0], 2)}
                for kind, make in (("submit", deployment.submit_users), ("list", deployment.list_users),
                                   ("healthz", deployment.health_users)):
                    span = seconds if kind != "healthz" else min(seconds, 3.0)
                    before = _cpu_now(deployment.pid, others)
                    load = run_load("127.0.0.1", deployment.port, make(), span)
                    after = _cpu_now(deployment.pid, others)
                    row[kind] = {**load.summary(), **{
                        name: round((after[name] - before[name]) / load.completed * 1e3, 2)
                        for name in after if after[name] is not None and before[name] is not None}}
                _log(f"round {round_index + 1} {deployment.name}: {row}")
                rounds_out[deployment.name].append(row)
        result["trees"] = {name: {"rounds": rows, "median": _medians(rows)} for name, rows in rounds_out.items()}
    result["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return result


def _services(stack: ExitStack) -> tuple[str, str]:
    """TEST_DATABASE_URL's PostgreSQL and TEST_REDIS_URL's Redis (defaults: this machine's usual ports) when they
    answer, else an embedded one of each for this run (the test suite's, `tests/services`), stopped afterwards."""
    from tests.services import postgres, redis

    pg = os.environ.get("TEST_DATABASE_URL") or DEFAULT_PG
    if postgres.answers(pg) is not None:
        server = stack.enter_context(_closing(postgres.EmbeddedPostgres().start()))
        pg = server.url
        _log(f"no PostgreSQL at TEST_DATABASE_URL: started an embedded one ({pg})")
    redis_url = os.environ.get("TEST_REDIS_URL") or DEFAULT_REDIS
    if redis.answers(redis_url) is not None:
        server = stack.enter_context(_closing(redis.EmbeddedRedis().start()))
        redis_url = server.url
        _log(f"no Redis at TEST_REDIS_URL: started an embedded one ({redis_url})")
    return pg, redis_url


@contextmanager
def _closing(server):
    try:
        yield server
    finally:
        server.close()


class OtherProcesses:
    """CPU seconds used so far by the PostgreSQL server (postmaster and backends) and the Redis server behind
    `settings`, where this machine can see them (None where not): on a shared machine their share of a
    request is part of what limits the API, beside the uvicorn process's own."""

    def __init__(self, settings):
        from redis import Redis
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import SQLAlchemyError

        self.redis = Redis.from_url(settings.redis_url)
        self.postmaster: int | None = None
        engine = create_engine(settings.database_url)
        try:
            with engine.connect() as connection:
                data = Path(connection.execute(text("SHOW data_directory")).scalar_one())
            self.postmaster = int((data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError, SQLAlchemyError) as error:  # remote, or not ours to read
            _log(f"PostgreSQL's CPU is not measured ({type(error).__name__}: {error})")
        finally:
            engine.dispose()

    def postgres_seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        total = _cpu_seconds(self.postmaster, children_done=True)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.postmaster:  # a backend, or autovacuum, the WAL writer...
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):  # exited while we looked
                continue
        return total

    def redis_seconds(self) -> float | None:
        from redis import RedisError

        try:
            info = self.redis.info("cpu")
        except RedisError:
            return None
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _cpu_now(server_pid: int, others: OtherProcesses) -> dict[str, float | None]:
    """CPU seconds so far of the uvicorn process, PostgreSQL, Redis and this process (the load generator)."""
    return {"cpu_ms": _cpu_seconds(server_pid), "postgres_cpu_ms": others.postgres_seconds(),
            "redis_cpu_ms": others.redis_seconds(), "loadgen_cpu_ms": time.process_time()}


def _cpu_seconds(pid: int, children_done: bool = False) -> float:
    """User + system CPU seconds the process has used (Linux /proc): the server's cost per request, which
    other work on the machine slows less than it slows latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children_done else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


_RATES = ("per_s", "p50_ms", "p99_ms")
_CPU = ("cpu_ms", "postgres_cpu_ms", "redis_cpu_ms", "loadgen_cpu_ms")


def _medians(rows: list[dict]) -> dict[str, dict[str, float]]:
    from statistics import median

    out: dict[str, dict[str, float]] = {}
    for kind in ("submit", "list", "healthz"):
        out[kind] = {metric: round(median(row[kind][metric] for row in rows), 1 if metric in _RATES else 2)
                     for metric in (*_RATES, *_CPU) if all(metric in row[kind] for row in rows)}
    return out
