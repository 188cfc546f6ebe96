"""A session factory on either database the service runs on, for tests parametrized over both."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.db import make_engine, make_session_factory, upgrade

BOTH = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


def sessions_on(request, tmp_path, pg_fixture: str = "pg_url") -> Iterator:
    """Yield a session factory on a migrated SQLite file (`request.param == "sqlite"`) or on the PostgreSQL
    database of the fixture named `pg_fixture`; the engine is disposed afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'caps.db'}"
        upgrade(url)
    else:
        url = request.getfixturevalue(pg_fixture)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()
