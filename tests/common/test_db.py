"""Migrations build exactly the schema the models describe, on PostgreSQL and on SQLite."""

from __future__ import annotations

import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import common.models
from common.db import alembic_config, make_engine, upgrade
from common.models import Base, new_id


def _import_all_models() -> None:
    # Tables declared outside common.models (e.g. webhook deliveries) must be in the metadata too.
    import importlib
    import pkgutil

    import common

    for module in pkgutil.iter_modules(common.__path__):
        if module.name not in ("settings_doc",):
            importlib.import_module(f"common.{module.name}")


def _schema_drift(url: str) -> list:
    _import_all_models()
    engine = make_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        drift = compare_metadata(context, Base.metadata)
    engine.dispose()
    return drift


@pytest.mark.services
def test_postgres_migrations_match_the_models(pg_url):
    assert _schema_drift(pg_url) == []


def test_sqlite_migrations_up_down_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    assert _schema_drift(url) == []
    command.downgrade(alembic_config(url), "base")
    upgrade(url)
    assert _schema_drift(url) == []


def test_ids_are_prefixed_sortable_and_unique():
    ids = [new_id("edt") for _ in range(2000)]
    assert len(set(ids)) == 2000 and all(i.startswith("edt_") and len(i) == 30 for i in ids)
    time.sleep(0.002)
    assert common.models.new_id("img")[4:] > ids[0][4:]  # later ids sort after earlier ones (ms resolution)
