"""A whole deployment for the fault tests: the API in process, a real worker process with beat (the
preloaded prefork worker of tests/services/preloaded_worker.py, which the tests SIGKILL) and local
storage; it remembers every edit it accepted, so a test can count the jobs lost and duplicated."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from common.models import Edit
from common.storage import LocalStorage
from tests.services.api import Api
from tests.services.worker import WorkerProcess

TERMINAL = ("succeeded", "failed", "canceled")


class Deployment(Api):
    """The one client (one account's key) plus the settings, the database, the worker and the ids of the
    edits it accepted."""

    def __init__(self, client, key: str, settings, factory: sessionmaker, worker: WorkerProcess):
        super().__init__(client, key)
        self.settings, self.factory, self.worker = settings, factory, worker
        self.accepted: list[str] = []

    def submit(self, image_id: str, **extra):
        """`POST /v1/edits` (a one-change edit unless `extra` says otherwise); an accepted id is remembered."""
        body = {"image": image_id, "neutral": "a face", "target": "a smiling face", "alphas": [0, 1.5],
                "beta": 0.15, **extra}
        r = self.post("/v1/edits", json=body)
        if r.status_code == 201:
            self.accepted.append(r.json()["id"])
        return r

    def rows(self, ids: list[str]) -> dict[str, Edit]:
        with self.factory() as s:
            return {e.id: e for e in s.scalars(select(Edit).where(Edit.id.in_(ids)))}

    def wait_terminal(self, ids: list[str], timeout: float) -> dict[str, Edit]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(ids)
            if all(r.status in TERMINAL for r in rows.values()) or time.monotonic() > deadline:
                return rows
            time.sleep(0.25)

    def result_objects(self, edit_id: str) -> list[str]:
        return LocalStorage(self.settings.storage_dir).list(f"results/{edit_id}")


@contextlib.contextmanager
def running_deployment(settings, log_dir: Path) -> Iterator[Deployment]:
    """The deployment for `settings` (see tests/services/settings.py: fault_settings), its worker's log in
    `log_dir`; everything stopped afterwards."""
    from fastapi.testclient import TestClient

    from api.keys import create_key
    from api.main import create_app
    from common.db import upgrade

    upgrade(settings.database_url)
    engine = create_engine(settings.database_url, pool_pre_ping=True)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        _, key = create_key(session, "faults", owner=f"faults-{uuid.uuid4().hex[:6]}")
    worker = WorkerProcess(settings, log_dir / f"worker-{uuid.uuid4().hex[:6]}.log", beat=True, preloaded=True)
    worker.start()
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Deployment(client, key, settings, factory, worker)
    finally:
        worker.stop()
        app.state.engine.dispose()
        engine.dispose()
