"""Database engine, sessions and migrations (SQLite embedded by default, PostgreSQL in production)."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from common.settings import REPO_ROOT

MIGRATIONS_DIR = REPO_ROOT / "common" / "migrations"
PING_IDLE_SECONDS = 1.0  # a pooled connection idle this long is pinged before use
_CHECKED_IN_AT = "faceedit_checked_in_at"


def make_engine(url: str) -> Engine:
    """An engine for `url`; for SQLite, the folder is created and WAL lets API and worker share the file."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # sqlalchemy.create_engine looked up at call time: OpenTelemetry's instrumentation wraps it (common/tracing.py)
        engine = sqlalchemy.create_engine(url, pool_size=10, max_overflow=20)
        _ping_idle_connections(engine)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """`pool_pre_ping`, for connections idle at least PING_IDLE_SECONDS: a connection back in the pool a moment
    ago is handed out unchecked, saving a round trip per request on a busy API (one in seven of a submit's). A
    dead connection is replaced before use (the pool retries on DisconnectionError); one that died within the
    last moment fails its statement instead, which invalidates the pool (the API answers 503, retry shortly)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
        checked_in_at = record.info.get(_CHECKED_IN_AT)  # None: just connected (`info` lives as long as it)
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise DisconnectionError(f"the connection failed its ping: {type(error).__name__}") from error


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (responses are built after the commit)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str):
    """An Alembic config pointing at our migrations, independent of the working directory."""
    from alembic.config import Config

    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': escape it (URL-encoded passwords contain it).
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (idempotent; run at every start)."""
    from alembic import command

    make_engine(url).dispose()  # creates the SQLite folder
    command.upgrade(alembic_config(url), revision)
