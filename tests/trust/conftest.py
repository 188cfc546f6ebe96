"""Fixtures of the trust suite: a private PostgreSQL database migrated to head, and the closing counts
(cases tried, 5xx seen, jobs lost, jobs duplicated) printed at the end of the run."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://faceedit:faceedit@127.0.0.1:5432/faceedit_test")
COUNTS: Counter[str] = Counter()
COUNT_NAMES = ("cases tried", "5xx seen", "jobs checked", "jobs lost", "jobs duplicated", "worker kills")


def count(name: str, n: int = 1) -> None:
    """Add to one of the closing counts (COUNT_NAMES)."""
    COUNTS[name] += n


@contextlib.contextmanager
def pg_database():
    """A new PostgreSQL database migrated to head (skips without PostgreSQL); dropped afterwards."""
    from common.db import upgrade

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"trust_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001 - any connection failure means "no PostgreSQL here"
        admin.dispose()
        pytest.skip(f"no PostgreSQL at {ADMIN_URL}: {type(e).__name__}")
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def fresh_pg_url():
    with pg_database() as url:
        yield url


@pytest.fixture(scope="module")
def module_pg_url():
    with pg_database() as url:
        yield url


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not COUNTS:
        return
    line = ", ".join(f"{name}: {COUNTS.get(name, 0)}" for name in COUNT_NAMES)
    terminalreporter.write_sep("=", "trust suite closing counts")
    terminalreporter.write_line(line)
    out = Path(os.environ.get("TRUST_COUNTS_FILE", "runs/trust-counts.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({name: COUNTS.get(name, 0) for name in COUNT_NAMES}, indent=2) + "\n")
