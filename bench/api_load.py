"""The API under load (issue #16 §3): 16 users at once against one uvicorn process on a real PostgreSQL and Redis.

Each user has its own API key and photo and submits edits back to back (`POST /v1/edits`), then lists its
newest five (`GET /v1/edits?limit=5`); `/healthz` gives the ceiling of this stack. No worker runs, so the
submitted edits stay queued and the queue caps count a growing queue, as on a busy day.

With `--api-baseline REV` the same rounds run against the tree of git revision REV too (exported to a
temporary folder, its own uvicorn and its own database), alternating round by round, so before/after come from
the same run under the same background load. The PostgreSQL is TEST_DATABASE_URL's server (a private database
per tree, dropped afterwards: `tests/services/postgres.private_database`); the Redis is TEST_REDIS_URL's, on
private queue names that are deleted afterwards.
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
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()


class Deployment:
    """One tree served on its own database and queues, with `users` keys that each uploaded a photo."""

    def __init__(self, stack: ExitStack, name: str, revision: str | None, photo: bytes, users: int, tmp: Path):
        from api.keys import create_key
        from common.db import make_engine, make_session_factory
        from tests.processes import free_port
        from tests.services.postgres import private_database
        from tests.services.settings import build_settings, drop_queues

        self.name = name
        pg = os.environ.get("TEST_DATABASE_URL") or DEFAULT_PG
        redis_url = os.environ.get("TEST_REDIS_URL") or DEFAULT_REDIS
        database = stack.enter_context(private_database(pg, prefix="bench_load"))
        self.settings = build_settings(
            database, redis_url, storage_dir=tmp / f"storage-{name}", tag="bench", log_level="INFO",
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
        deployments = [Deployment(stack, name, None if name == "current" else baseline, photo, users, tmp)
                       for name in names]
        rounds_out: dict[str, list[dict]] = {d.name: [] for d in deployments}
        for round_index in range(rounds):
            for deployment in deployments if round_index % 2 == 0 else deployments[::-1]:
                row = {"load_average_1m": round(os.getloadavg()[0], 2)}
                for kind, make in (("submit", deployment.submit_users), ("list", deployment.list_users),
                                   ("healthz", deployment.health_users)):
                    span = seconds if kind != "healthz" else min(seconds, 3.0)
                    cpu = _cpu_seconds(deployment.pid)
                    load = run_load("127.0.0.1", deployment.port, make(), span)
                    row[kind] = {**load.summary(),
                                 "cpu_ms": round((_cpu_seconds(deployment.pid) - cpu) / load.completed * 1e3, 2)}
                _log(f"round {round_index + 1} {deployment.name}: {row}")
                rounds_out[deployment.name].append(row)
        result["trees"] = {name: {"rounds": rows, "median": _medians(rows)} for name, rows in rounds_out.items()}
    result["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (Linux /proc): the server's cost per request, which
    other work on the machine slows less than it slows latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _medians(rows: list[dict]) -> dict[str, dict[str, float]]:
    from statistics import median

    out: dict[str, dict[str, float]] = {}
    for kind in ("submit", "list", "healthz"):
        out[kind] = {metric: round(median(row[kind][metric] for row in rows), 1)
                     for metric in ("per_s", "p50_ms", "p99_ms", "cpu_ms")}
    return out
