"""Engines, sessions and ids (the schema against the migrations: tests/common/test_migrations.py)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from common.db import make_engine, make_session_factory, upgrade
from common.lifecycle import EditStatus
from common.models import Edit, new_id, utcnow


def test_ids_are_prefixed_sortable_and_unique():
    ids = [new_id("edt") for _ in range(2000)]
    assert len(set(ids)) == 2000 and all(i.startswith("edt_") and len(i) == 30 for i in ids)
    time.sleep(0.002)
    assert new_id("img")[4:] > ids[0][4:]  # later ids sort after earlier ones (ms resolution)


def test_sqlite_file_in_a_new_folder_shares_by_wal_and_enforces_foreign_keys(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'folder' / 'db.sqlite'}"
    upgrade(url)  # creates the folder
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        now = utcnow()
        orphan = Edit(id=new_id("edt"), owner="o", image_id="img_missing", changes=[{"neutral": "a", "target": "b", "weight": 1.0}], alphas=[1],
                      beta=0.1, mode="global", output_format="jpeg", status=EditStatus.STARTING,
                      deadline_at=now + timedelta(minutes=1))  # fmt: skip
        with make_session_factory(engine)() as session:
            session.add(orphan)
            with pytest.raises(IntegrityError):
                session.commit()
    finally:
        engine.dispose()


@pytest.mark.services
def test_an_idle_pooled_connection_is_pinged_and_a_just_used_one_is_not(pg_url, monkeypatch):
    """PostgreSQL killed the pooled connection's backend (a restart, a failover): after PING_IDLE_SECONDS in
    the pool it is pinged and replaced unseen; a connection back in the pool a moment ago is handed out as is
    (one round trip saved per request), so its statement fails once and the pool reconnects behind it."""
    from sqlalchemy.exc import OperationalError

    import common.db

    engine = make_engine(pg_url)
    admin = make_engine(pg_url)

    def kill_pooled_backend() -> None:
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            connection.commit()
        time.sleep(0.2)

    try:
        monkeypatch.setattr(common.db, "PING_IDLE_SECONDS", 0.0)  # every connection counts as idle
        kill_pooled_backend()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
        monkeypatch.setattr(common.db, "PING_IDLE_SECONDS", 3600.0)  # every connection was just used
        kill_pooled_backend()
        with pytest.raises(OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
        admin.dispose()
