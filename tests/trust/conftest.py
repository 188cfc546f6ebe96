"""Fixtures of the trust suite: a private PostgreSQL database migrated to head, and the closing counts
(cases tried, 5xx seen, jobs lost, jobs duplicated) printed at the end of the run."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from tests.services.postgres import private_database
from tests.services.provision import require

COUNTS: Counter[str] = Counter()
COUNT_NAMES = ("cases tried", "5xx seen", "jobs checked", "jobs lost", "jobs duplicated", "worker kills")


def count(name: str, n: int = 1) -> None:
    """Add to one of the closing counts (COUNT_NAMES)."""
    COUNTS[name] += n


def pg_database():
    """A new PostgreSQL database migrated to head, dropped afterwards (tests/services/postgres.py)."""
    return private_database(require("postgresql"), prefix="trust")


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
