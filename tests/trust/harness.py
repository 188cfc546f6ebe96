"""The API as the trust tests drive it: real PostgreSQL (a private database), real Redis (a private
queue name), local-folder storage, two accounts (alice, bob) and a revoked key."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from api.keys import create_key, revoke_key
from api.main import create_app
from common.settings import Settings
from tests.trust import hostile

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
GOOD_EDIT = {"neutral": "a face", "target": "a smiling face", "alphas": [0, 2], "beta": 0.15}


@dataclass
class Service:
    client: TestClient
    settings: Settings
    factory: sessionmaker[Session]
    keys: dict[str, str] = field(default_factory=dict)

    def auth(self, who: str = "alice", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}", **extra}

    def upload(self, who: str = "alice", data: bytes | None = None, **headers: str):
        files = {"file": ("face.jpg", data if data is not None else hostile.photo("JPEG", (128, 128)), "image/jpeg")}
        return self.client.post("/v1/images", files=files, headers=self.auth(who, **headers))

    def submit(self, image_id: str, who: str = "alice", **overrides):
        return self.client.post("/v1/edits", json={"image": image_id, **GOOD_EDIT, **overrides},
                                headers=self.auth(who))

    def queued(self) -> int:
        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            return client.llen(self.settings.edits_queue)
        finally:
            client.close()


GENEROUS_LIMITS = dict(
    rate_limit_per_second=1000.0,
    rate_limit_burst=10000,
    submit_rate_per_second=1000.0,
    submit_rate_burst=10000,
    max_queued_per_owner=10000,
    max_queued_total=100000,
)


def trust_settings(database_url: str, storage_dir: Path, **overrides) -> Settings:
    """Settings for a test service; generous limits unless a test asks for tight ones."""
    values = dict(
        database_url=database_url,
        redis_url=REDIS_URL,
        storage_backend="local",
        storage_dir=storage_dir,
        edits_queue=f"edits-trust-{uuid.uuid4().hex[:8]}",
        io_queue=f"io-trust-{uuid.uuid4().hex[:8]}",
        web_dir=storage_dir / "no-web",
        **GENEROUS_LIMITS,
    )
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def running_service(settings: Settings, owner_suffix: str = "", drop_queues: bool = True) -> Iterator[Service]:
    """The API for `settings` with keys for alice, bob and a revoked one. `owner_suffix` keeps the
    accounts apart in a database other tests share; `drop_queues=False` leaves shared queues alone."""
    engine = create_engine(settings.database_url)
    factory = sessionmaker(engine, expire_on_commit=False)
    service = Service(client=None, settings=settings, factory=factory)  # type: ignore[arg-type]
    with factory() as session:
        for who in ("alice", "bob", "revoked"):
            row, key = create_key(session, who, owner=who + owner_suffix)
            service.keys[who] = key
        revoke_key(session, row.id)
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            service.client = client
            yield service
    finally:
        app.state.engine.dispose()
        engine.dispose()
        if drop_queues:
            queue = redis.Redis.from_url(settings.redis_url)
            queue.delete(settings.edits_queue, settings.io_queue)
            queue.close()
