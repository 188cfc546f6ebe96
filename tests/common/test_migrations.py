"""The migrations build exactly the schema the models describe, so `alembic revision --autogenerate` proposes
nothing: every table in common.models' one metadata, and no difference in columns, types, nullability,
indexes, unique constraints, foreign keys or server defaults, on PostgreSQL and on SQLite."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from common.db import alembic_config, make_engine, make_session_factory, upgrade
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


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def test_edits_move_to_the_changes_form_once(database, tmp_path):
    """0005 (#21): an edit of the one-change form (changes null: SQL NULL or the JSON null the ORM wrote) gets
    its texts as one change of weight 1, a missing `faces` becomes "largest", and an edit given `changes`
    keeps them; the downgrade gives back the first change's texts."""
    if database == "postgresql":
        from tests.conftest import fresh_database

        with fresh_database() as url:
            _changes_form_once(url)
    else:
        _changes_form_once(f"sqlite:///{tmp_path / 'db.sqlite'}")


def _changes_form_once(url: str) -> None:
    from sqlalchemy import text

    from common.models import Edit

    upgrade(url)
    command.downgrade(alembic_config(url), "0004")
    engine = make_engine(url)
    rows = [("e_sql_null", "a face", "a smile", None), ("e_json_null", "a face", "a frown", "null"),
            ("e_changes", "x", "y", '[{"neutral": "x", "target": "y", "weight": 0.5}]')]
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO images (id, owner, format, width, height, bytes, sha256, created_at, "
                                    "faces_status) VALUES ('img', 'o', 'jpeg', 1, 1, 1, 's', '2026-12-01', 'done')"))
            for edit_id, neutral, target, changes in rows:
                connection.execute(text(
                    "INSERT INTO edits (id, owner, image_id, neutral, target, alphas, changes, beta, mode, "
                    "output_format, status, attempt, deadline_at, created_at) VALUES (:id, 'o', 'img', :n, :t, "
                    "'[1]', :c, 0.15, 'global', 'jpeg', 'succeeded', 1, '2026-12-01', '2026-12-01')"),
                    {"id": edit_id, "n": neutral, "t": target, "c": changes})
        upgrade(url)
        with make_session_factory(engine)() as session:
            specs = {edit_id: session.get(Edit, edit_id).spec for edit_id, *_ in rows}
        assert [c.model_dump() for c in specs["e_sql_null"].changes] == [
            {"neutral": "a face", "target": "a smile", "weight": 1.0}]
        assert specs["e_json_null"].changes[0].target == "a frown" and specs["e_json_null"].faces == "largest"
        assert specs["e_changes"].changes[0].weight == 0.5 and specs["e_changes"].inversion == "e4e"
        command.downgrade(alembic_config(url), "0004")
        with engine.connect() as connection:
            texts = dict(connection.execute(text("SELECT id, target FROM edits")).all())
        assert texts == {"e_sql_null": "a smile", "e_json_null": "a frown", "e_changes": "y"}
    finally:
        engine.dispose()
