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
        orphan = Edit(id=new_id("edt"), owner="o", image_id="img_missing", neutral="a", target="b", alphas=[1],
                      beta=0.1, mode="global", output_format="jpeg", status=EditStatus.STARTING,
                      deadline_at=now + timedelta(minutes=1))  # fmt: skip
        with make_session_factory(engine)() as session:
            session.add(orphan)
            with pytest.raises(IntegrityError):
                session.commit()
    finally:
        engine.dispose()
