"""Shared service fixtures: real PostgreSQL, Redis and S3 over sockets, a real Celery worker process.

Addresses come from the environment (`.ci/run` sets them): TEST_DATABASE_URL (a database the user
may create databases next to: each session gets its own, dropped afterwards), TEST_REDIS_URL (each
session uses its own queue names), TEST_S3_ENDPOINT_URL (else moto's server on a free port).
TEST_DEV_BUNDLE_DIR reuses an existing development bundle instead of writing one.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg://faceedit:faceedit@127.0.0.1:5432/faceedit_test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# A real face photo (MediaPipe must find a face): the golden fixtures' input, as `make verify-golden` finds them.
FACE_PHOTO = Path(os.environ.get("GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden")) / "face_input.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def face_jpeg(scale: int = 1) -> bytes:
    """A real face photo as JPEG (MediaPipe must find a face in it), optionally upscaled."""
    from PIL import Image

    image = Image.open(FACE_PHOTO).convert("RGB")
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


# --- the three services ---------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database at head, dropped afterwards (skips the test without PostgreSQL)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from common.db import upgrade

    admin = create_engine(DATABASE_URL, isolation_level="AUTOCOMMIT")
    name = f"faceedit_t_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        admin.dispose()
        pytest.skip(f"no PostgreSQL at {DATABASE_URL}: {error.orig}")
    url = make_url(DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The session's PostgreSQL database."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except RedisConnectionError as error:
        pytest.skip(f"no Redis at {REDIS_URL}: {error}")
    return REDIS_URL


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 endpoint spoken to over HTTP: TEST_S3_ENDPOINT_URL, else a moto server of our own."""
    if os.environ.get("TEST_S3_ENDPOINT_URL"):
        yield os.environ["TEST_S3_ENDPOINT_URL"]
        return
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def dev_bundle(tmp_path_factory) -> Path:
    """The random-weight development bundle, written once per session by the pipeline's own CLI."""
    reuse = os.environ.get("TEST_DEV_BUNDLE_DIR")
    if reuse and (Path(reuse) / "manifest.json").is_file():
        return Path(reuse)
    directory = tmp_path_factory.mktemp("dev-bundle")
    subprocess.run(
        [sys.executable, "-m", "pipeline", "make-dev-bundle", str(directory)],
        cwd=REPO_ROOT, check=True, timeout=1200, capture_output=True,
    )  # fmt: skip
    return directory


# --- settings for a service under test ------------------------------------------------------------


def service_settings(pg_url: str, redis_url: str, s3_endpoint: str, model_dir: Path | None = None, **overrides):
    """Settings for PostgreSQL + Redis + S3 with private queue names and a private bucket; timings
    shortened so leases, cancels and the reaper act within a test's patience."""
    from common.settings import Settings

    tag = uuid.uuid4().hex[:8]
    values = {
        "database_url": pg_url,
        "redis_url": redis_url,
        "storage_backend": "s3",
        "s3_endpoint_url": s3_endpoint,
        "s3_bucket": f"faceedit-{tag}",
        "s3_access_key_id": "testing",
        "s3_secret_access_key": "testing",
        "s3_create_bucket": True,
        "model_dir": model_dir,
        "edits_queue": f"edits-{tag}",
        "io_queue": f"io-{tag}",
        "lease_seconds": 4.0,
        "heartbeat_seconds": 1.0,
        "reaper_interval_seconds": 1.0,
        "cancel_check_seconds": 0.1,
        "progress_write_seconds": 0.1,
        "wait_poll_seconds": 0.05,
        "job_deadline_seconds": 600,
        # The service tests drive one key hard; rate limits and queue caps have their own tests (tests/trust).
        "rate_limit_per_second": 1000.0,
        "rate_limit_burst": 1000,
        "submit_rate_per_second": 1000.0,
        "submit_rate_burst": 1000,
        "max_queued_per_owner": 10_000,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings) -> dict[str, str]:
    """The environment that reproduces `settings` in a child process."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[name.upper()] = str(value)
    return env


def drop_queues(settings) -> None:
    """Remove a test's private queues from the shared Redis."""
    from redis import Redis

    client = Redis.from_url(settings.redis_url)
    for queue in (settings.edits_queue, settings.io_queue):
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    client.close()


@pytest.fixture(scope="session")
def settings(pg_url, redis_url, s3_endpoint):
    """The session's service settings (PostgreSQL + Redis + S3 over HTTP); the session's `worker`
    consumes their queues."""
    values = service_settings(pg_url, redis_url, s3_endpoint)
    yield values
    drop_queues(values)


@pytest.fixture(scope="module")
def queued_settings(pg_url, redis_url, s3_endpoint):
    """Settings whose queues no worker consumes: edits stay `starting` until canceled."""
    values = service_settings(pg_url, redis_url, s3_endpoint)
    yield values
    drop_queues(values)


# --- processes ------------------------------------------------------------------------------------


def _child_pids(pid: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = task / "children"
        if children.is_file():
            pids += [int(p) for p in children.read_text().split()]
    return pids


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class WorkerProcess:
    """A real `celery worker -P solo` child (with the reaper's beat), logging to a file."""

    def __init__(self, settings, log_path: Path, beat: bool = True):
        self.settings, self.log_path, self.beat = settings, log_path, beat
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> WorkerProcess:
        queues = f"{self.settings.edits_queue},{self.settings.io_queue}"
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "solo", "-c", "1",
                   "-Q", queues, "-n", f"test-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO",
                   "--without-gossip", "--without-mingle"]  # fmt: skip
        if self.beat:
            command += ["-B", "--schedule", str(self.log_path.with_suffix(".beat"))]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=settings_env(self.settings), stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if "models ready" in text or "models not loaded" in text:
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited ({self.process.returncode}):\n{text[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no ack; exactly what an OOM kill does."""
        if self.process and self.process.poll() is None:
            children = _child_pids(self.process.pid)
            self.process.kill()
            self.process.wait()
            _kill_pids(children)  # the embedded beat would outlive its killed parent

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            children = _child_pids(self.process.pid)
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            _kill_pids(children)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def worker(settings, dev_bundle, tmp_path_factory) -> Iterator[WorkerProcess]:
    """One real worker for the session (tests that kill workers start their own)."""
    worker_settings = settings.model_copy(update={"model_dir": dev_bundle})
    process = WorkerProcess(worker_settings, tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield process
    process.stop()


# --- the API in process ---------------------------------------------------------------------------


class Api:
    """TestClient + a key: `api.post(...)` sends the bearer header."""

    def __init__(self, client, key: str):
        self.client, self.key = client, key
        self.headers = {"Authorization": f"Bearer {key}"}

    def __getattr__(self, method):
        call = getattr(self.client, method)

        def with_key(url, **kwargs):
            kwargs["headers"] = {**self.headers, **kwargs.get("headers", {})}
            return call(url, **kwargs)

        return with_key

    def upload(self, data: bytes, name: str = "face.jpg", content_type: str = "image/jpeg") -> dict:
        response = self.post("/v1/images", files={"file": (name, data, content_type)})
        assert response.status_code == 201, response.text
        return response.json()

    def wait(self, edit_id: str, timeout: float = 180, until=("succeeded", "failed", "canceled")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            edit = self.get(f"/v1/edits/{edit_id}").json()
            if edit["status"] in until:
                return edit
            time.sleep(0.1)
        raise TimeoutError(f"edit {edit_id} still {edit['status']} after {timeout}s")


def make_api(settings, name: str = "test") -> Api:
    from fastapi.testclient import TestClient

    from api.keys import create_key
    from api.main import create_app

    app = create_app(settings)
    with app.state.session_factory() as session:
        _, key = create_key(session, name)
    return Api(TestClient(app), key)


@pytest.fixture(scope="session")
def api(settings) -> Api:
    return make_api(settings)
