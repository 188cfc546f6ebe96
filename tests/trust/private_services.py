"""Private Redis and PostgreSQL servers for the fault tests, which restart them: the shared services
other tests use are never touched. PostgreSQL runs as the `postgres` user (initdb refuses root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.conftest import free_port

PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=None, key=lambda p: int(p.parent.name))


class PrivateRedis:
    """`redis-server` on a free port. `persistent=False` is the CI configuration (`--save ''
    --appendonly no`): a restart empties it, as a crashed cache-only Redis would."""

    def __init__(self, persistent: bool = False):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="trust-redis-"))
        self.persistent = persistent
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                   "--save", "", "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, down_s: float = 1.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _as_postgres(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True,
                          text=True, timeout=120)


class PrivatePostgres:
    """A throwaway cluster (initdb in a temp dir, trust auth, fsync off) on a free port."""

    def __init__(self):
        if PG_BIN is None or os.geteuid() != 0 or shutil.which("runuser") is None:
            raise RuntimeError("needs root, runuser and a Debian PostgreSQL install")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="trust-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        shutil.chown(self.root, "postgres", "postgres")
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "--auth=trust", "--username=faceedit",
                     "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://faceedit@127.0.0.1:{self.port}/postgres"

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", options,
                     "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash (no checkpoint; recovery at the next start)."""
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        try:
            self.stop("fast")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
