"""A whole service for the fault tests: the API in process, a real worker process (models loaded once
in its parent, see preloaded_worker.py) with beat, local storage, and a webhook receiver."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from api.keys import create_key
from api.main import create_app
from common.models import Edit
from common.settings import Settings
from common.storage import LocalStorage
from tests.services.settings import FAULT_TIMINGS, build_settings
from tests.services.worker import WorkerProcess

TERMINAL = ("succeeded", "failed", "canceled")


def fault_settings(database_url: str, redis_url: str, storage_dir: Path, model_dir: Path, **overrides) -> Settings:
    """Short leases and fast beat so kills and restarts are recovered within seconds."""
    return build_settings(database_url, redis_url, storage_dir=storage_dir, model_dir=model_dir, tag="f",
                          **{**FAULT_TIMINGS, **overrides})


class Worker(WorkerProcess):
    """The preloaded prefork worker (tests/trust/preloaded_worker.py) with beat, a log file per start."""

    def __init__(self, settings: Settings, log_dir: Path):
        super().__init__(settings, log_dir / "worker.log", beat=True, preloaded=True)
        self.log_dir = log_dir

    def start(self, timeout: float = 300) -> Worker:
        self.log_path = self.log_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
        super().start(timeout)
        return self


@dataclass
class Stack:
    settings: Settings
    client: TestClient
    factory: sessionmaker[Session]
    worker: Worker
    key: str
    accepted: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def upload(self, photo: bytes) -> str:
        r = self.client.post("/v1/images", files={"file": ("face.jpg", photo, "image/jpeg")}, headers=self.headers)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def submit(self, image_id: str, **extra):
        body = {"image": image_id, "neutral": "a face", "target": "a smiling face", "alphas": [0, 1.5],
                "beta": 0.15, **extra}
        r = self.client.post("/v1/edits", json=body, headers=self.headers)
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
def running_stack(settings: Settings, log_dir: Path) -> Iterator[Stack]:
    from common.db import upgrade

    upgrade(settings.database_url)
    engine = create_engine(settings.database_url, pool_pre_ping=True)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        _, key = create_key(session, "faults", owner=f"faults-{uuid.uuid4().hex[:6]}")
    worker = Worker(settings, log_dir).start()
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Stack(settings=settings, client=client, factory=factory, worker=worker, key=key)
    finally:
        worker.stop()
        app.state.engine.dispose()
        engine.dispose()
