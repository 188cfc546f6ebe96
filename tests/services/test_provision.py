"""The harness's own promises: a missing service fails (skips only when the run opts out), embedded
servers survive what the fault tests do to them, and nothing they start outlives a killed test process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from api.processes import free_port
from tests.services.postgres import EmbeddedPostgres, PostgresUnavailable, sqlalchemy_to_libpq
from tests.services.provision import ALLOW_MISSING, missing
from tests.services.redis import EmbeddedRedis, RedisUnavailable
from tests.services.scratch import sweep_stale

pytestmark = pytest.mark.services  # they start servers (test-fast leaves them out)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _inner_pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """A pytest session of its own, with the shared fixtures, on one test that needs PostgreSQL,
    where nothing is configured and nothing answers at the default address."""
    test = tmp_path / "test_needs_postgres.py"
    test.write_text("def test_needs_postgres(pg_url):\n    assert pg_url\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "FACEEDIT_", "PYTEST_"))}
    base.update(TEST_DEFAULT_DATABASE_URL=f"postgresql+psycopg://faceedit@127.0.0.1:{free_port()}/x",
                TEST_DEFAULT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", PYTHONPATH=str(REPO_ROOT), **env)
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-ra", "-p", "no:cacheprovider",
               "--rootdir", str(tmp_path), str(test)]
    return subprocess.run(command, cwd=REPO_ROOT, env=base, capture_output=True, text=True, timeout=120)


def test_a_missing_service_fails_naming_how_to_get_it(tmp_path):
    done = _inner_pytest(tmp_path, TEST_POSTGRES_BIN=str(tmp_path / "no-such-folder"))
    assert done.returncode == 1, done.stdout
    assert "1 error" in done.stdout and "skipped" not in done.stdout, done.stdout
    assert "missing service: postgresql" in done.stdout and "apt-get install postgresql" in done.stdout


def test_a_run_that_opts_out_skips_and_counts_it(tmp_path):
    done = _inner_pytest(tmp_path, TEST_POSTGRES_BIN=str(tmp_path / "no-such-folder"), **{ALLOW_MISSING: "1"})
    assert done.returncode == 0, done.stdout
    assert "1 skipped" in done.stdout and "1 tests SKIPPED for missing services" in done.stdout, done.stdout


@pytest.fixture
def embedded_postgres():
    try:
        server = EmbeddedPostgres().start()
    except PostgresUnavailable as error:
        missing(f"postgresql: {error}")
    yield server
    server.close()


def test_embedded_postgres_runs_unprivileged_and_recovers_from_a_crash(embedded_postgres):
    import psycopg

    url = sqlalchemy_to_libpq(embedded_postgres.url)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE kept (n int)")
        connection.execute("INSERT INTO kept VALUES (42)")
    owner = Path(f"/proc/{embedded_postgres.process.pid}/status").read_text().split("Uid:")[1].split()[0]
    assert int(owner) != 0 or os.geteuid() != 0  # PostgreSQL refuses root: it runs as someone else
    embedded_postgres.restart(down_s=0)  # SIGQUIT: no checkpoint, recovery at start
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT n FROM kept").fetchone() == (42,)
    root = embedded_postgres.root
    embedded_postgres.close()
    assert not root.exists()


def test_embedded_redis_restart_empties_it():
    from redis import Redis

    try:
        server = EmbeddedRedis().start()
    except RedisUnavailable as error:
        missing(f"redis: {error}")
    try:
        client = Redis.from_url(server.url)
        client.set("k", "v")
        server.restart(down_s=0)
        assert client.get("k") is None  # --save '' --appendonly no, as in CI
        client.close()
    finally:
        server.close()


def test_servers_die_with_a_killed_test_process():
    script = textwrap.dedent("""
        import time
        from tests.services.redis import EmbeddedRedis
        server = EmbeddedRedis().start()
        print(server.port, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    port = int(parent.stdout.readline())
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    parent.send_signal(signal.SIGKILL)  # no cleanup runs
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            sweep_stale()  # its folder, which the killed process could not remove
            return
        time.sleep(0.1)
    pytest.fail(f"redis-server on port {port} outlived the process that started it")
