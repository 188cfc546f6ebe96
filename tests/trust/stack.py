"""A whole service for the fault tests: the API in process, a real worker process (models loaded once
in its parent, see preloaded_worker.py) with beat, local storage, and a webhook receiver."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
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
from tests.conftest import REPO_ROOT, settings_env

TERMINAL = ("succeeded", "failed", "canceled")


def fault_settings(database_url: str, redis_url: str, storage_dir: Path, model_dir: Path, **overrides) -> Settings:
    """Short leases and fast beat so kills and restarts are recovered within seconds."""
    tag = uuid.uuid4().hex[:8]
    values = dict(
        database_url=database_url, redis_url=redis_url, storage_backend="local", storage_dir=storage_dir,
        model_dir=model_dir, edits_queue=f"edits-f{tag}", io_queue=f"io-f{tag}", web_dir=storage_dir / "no-web",
        lease_seconds=2.0, heartbeat_seconds=0.5, reaper_interval_seconds=0.5, cancel_check_seconds=0.2,
        progress_write_seconds=0.2, job_deadline_seconds=600, max_attempts=6,
        webhook_allow_networks="127.0.0.0/8", webhook_sweep_seconds=0.5, webhook_retry_base_seconds=0.3,
        webhook_retry_max_seconds=2.0, webhook_timeout_seconds=2.0, webhook_max_attempts=30,
        rate_limit_per_second=1000.0, rate_limit_burst=10000, submit_rate_per_second=1000.0,
        submit_rate_burst=10000, max_queued_per_owner=1000, max_queued_total=10000,
    )
    values.update(overrides)
    return Settings(**values)


class Worker:
    """`python -m tests.trust.preloaded_worker` with beat, logging to a file of its own."""

    def __init__(self, settings: Settings, log_dir: Path):
        self.settings, self.log_dir = settings, log_dir
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self, timeout: float = 300) -> Worker:
        self.log_path = self.log_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
        queues = f"{self.settings.edits_queue},{self.settings.io_queue}"
        command = [sys.executable, "-m", "tests.trust.preloaded_worker", "-Q", queues, "-B",
                   "--schedule", str(self.log_path.with_suffix(".beat")), "-n", f"fault-{uuid.uuid4().hex[:6]}@%h",
                   "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        env = {**settings_env(self.settings), "OMP_NUM_THREADS": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if " ready." in text:
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited ({self.process.returncode}):\n{text[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # a child the parent did not reap

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


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
