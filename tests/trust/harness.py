"""The API as the trust tests drive it: real PostgreSQL (a private database), real Redis (private
queue names), local-folder storage, two accounts (alice, bob) and a revoked key. Settings come from the
shared builder (tests/services/settings.py)."""

from __future__ import annotations

import contextlib
import os
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
from tests.services.settings import GENEROUS_LIMITS, build_settings
from tests.services.settings import drop_queues as drop_private_queues
from tests.trust import hostile

# Decided by the session before this module is imported (tests/services/provision.py).
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
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


__all__ = ["GENEROUS_LIMITS", "GOOD_EDIT", "REDIS_URL", "Service", "running_service", "trust_settings"]


def trust_settings(database_url: str, storage_dir: Path, **overrides) -> Settings:
    """Settings for a test service; generous limits unless a test asks for tight ones."""
    redis_url = overrides.pop("redis_url", REDIS_URL)
    return build_settings(database_url, redis_url, storage_dir=storage_dir, tag="trust-", **overrides)


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
        revoke_key(session, row.id, redis_url=settings.redis_url)
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            service.client = client
            yield service
    finally:
        app.state.engine.dispose()
        engine.dispose()
        if drop_queues:
            drop_private_queues(settings)
