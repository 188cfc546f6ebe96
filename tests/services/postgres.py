"""PostgreSQL for tests: an embedded cluster started from the server binaries on this machine, and
private databases (one per session, module or test) created next to any server's admin URL.

The embedded cluster is a throwaway: `initdb` in a temporary folder (trust auth, user `faceedit`, no
fsync, so only a machine crash could lose data), the `postmaster` a child of the test process on 127.0.0.1:<free port>, killed with it. PostgreSQL
refuses to run as root, so under root it runs as the `postgres` user (Debian's) or else `nobody`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from api.processes import die_with_parent, free_port
from tests.services.scratch import scratch_dir

HOW_TO_GET = (
    "install PostgreSQL's server binaries (Debian/Ubuntu: `apt-get install postgresql`; the tests find them "
    "under /usr/lib/postgresql/*/bin or on PATH, or set TEST_POSTGRES_BIN=<folder with initdb and postgres>), "
    "or point TEST_DATABASE_URL at a server whose user may create databases"
)
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL can be had here; the message says how to get one."""


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in bin_dir.parent.name.split(".") if part.isdigit())


def find_bin() -> Path | None:
    """The folder holding `initdb` and `postgres`: TEST_POSTGRES_BIN (only it, when set), Debian's newest
    /usr/lib/postgresql/<version>/bin, or the one `initdb` on PATH lives in (symlinks followed)."""
    if os.environ.get("TEST_POSTGRES_BIN"):  # explicit: that folder or none
        candidates = [Path(os.environ["TEST_POSTGRES_BIN"])]
    else:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise PostgresUnavailable("PostgreSQL refuses to run as root and this machine has no `postgres` or `nobody` user")


def sqlalchemy_to_libpq(url: str) -> str:
    """`postgresql+psycopg://…` → `postgresql://…` (what psycopg itself reads)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}://{rest}"


def answers(url: str, timeout: float = 2.0) -> str | None:
    """None when a PostgreSQL at `url` accepts this login, else why not."""
    import psycopg

    try:
        psycopg.connect(sqlalchemy_to_libpq(url), connect_timeout=max(1, round(timeout))).close()
    except psycopg.Error as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


class EmbeddedPostgres:
    """A throwaway cluster on 127.0.0.1:`port` (a free one unless given); `start`, `stop`, `restart`
    (a crash and recovery, for the fault tests), `close` (stop and delete everything)."""

    def __init__(self, port: int | None = None):
        self.bin = find_bin()
        if self.bin is None:
            raise PostgresUnavailable(f"no PostgreSQL server binaries found: {HOW_TO_GET}")
        self.user = _run_as()
        self.port = port or free_port()
        self.root = scratch_dir("pg")
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.process: subprocess.Popen | None = None
        if self.user:
            self.root.chmod(0o755)
            os.chown(self.root, *self.user)
        initdb = [str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust", "--username=faceedit",
                  "--encoding=UTF8", "--no-locale", "--no-sync"]
        done = subprocess.run(initdb, cwd=self.root, capture_output=True, text=True, timeout=120,
                              **self._identity())
        if done.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            raise PostgresUnavailable(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def _identity(self) -> dict:
        return {"user": self.user[0], "group": self.user[1], "extra_groups": []} if self.user else {}

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://faceedit@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60) -> EmbeddedPostgres:
        command = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
                   "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300", "-c", "shared_buffers=32MB",
                   # No fsync: a crash of the server (what the fault tests do) loses nothing, a crash of the
                   # machine would. Commits stay synchronous: they reach the WAL before they return.
                   "-c", "fsync=off", "-c", "full_page_writes=off"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, preexec_fn=die_with_parent(signal.SIGQUIT),
                                            **self._identity())
        deadline = time.monotonic() + timeout
        while (why := answers(self.url, timeout=1)) is not None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop("immediate")
                raise PostgresUnavailable(f"the embedded PostgreSQL did not start ({why}):\n{self.log()[-2000:]}")
            time.sleep(0.1)
        return self

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash (no checkpoint; recovery at the next start), `fast` a clean stop."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(_STOP_SIGNALS[mode])
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop("fast")
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


@contextlib.contextmanager
def private_database(admin_url: str, prefix: str = "faceedit_t") -> Iterator[str]:
    """A new database next to `admin_url`, migrated to head, dropped afterwards (even with sessions
    still open). The one way the tests make a database of their own."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from common.db import upgrade

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        try:
            upgrade(url)
            yield url
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
