"""The migrations build exactly the schema the models describe, so `alembic revision --autogenerate` proposes
nothing: every table in common.models' one metadata, and no difference in columns, types, nullability,
indexes, unique constraints, foreign keys or server defaults, on PostgreSQL and on SQLite."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from common.db import alembic_config, make_engine, upgrade
from common.models import Base


def _drift(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            opts = {"compare_type": True, "compare_server_default": True}
            return compare_metadata(MigrationContext.configure(connection, opts=opts), Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_every_table_is_declared_in_common_models():
    """Whatever else has been imported, the mapped classes all live in common.models: importing it alone gives
    autogenerate the whole schema (a table declared elsewhere would look dropped)."""
    modules = {mapper.class_.__module__ for mapper in Base.registry.mappers}
    assert modules == {"common.models"}
    assert {"edits", "idempotency_keys", "webhook_secrets", "webhook_deliveries"} <= set(Base.metadata.tables)


@pytest.mark.services
def test_postgresql_at_head_matches_the_models(pg_url):
    upgrade(pg_url)
    assert _drift(pg_url) == []
    assert _tables(pg_url) == set(Base.metadata.tables)
    command.check(alembic_config(pg_url))  # what `alembic check` / `revision --autogenerate` would see


def test_sqlite_at_head_matches_the_models_after_down_and_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    assert _drift(url) == []
    assert _tables(url) == set(Base.metadata.tables)
    command.downgrade(alembic_config(url), "base")
    assert _tables(url) == set()
    upgrade(url)
    assert _drift(url) == []


def test_the_comparison_sees_a_difference(tmp_path):
    """The check can fail: a database one migration short of head differs from the models."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url, "0001")
    assert any(diff[0] == "add_table" and diff[1].name == "idempotency_keys" for diff in _drift(url))
