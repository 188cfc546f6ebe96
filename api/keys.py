"""API keys: generated once, shown once, stored only as SHA-256 (keys are random, so a fast hash is safe)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.key_revocations import announce
from common.models import ApiKey, new_id, utcnow

KEY_PREFIX = "fe_"


def hash_key(key: str) -> str:
    """The only hash of a credential: stored in `api_keys.key_hash`, the rate-limit bucket and the
    idempotency scope of the key (api.auth computes it once per request)."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, owner: str | None = None) -> tuple[ApiKey, str]:
    """A new key row and the plaintext key (never stored). Without `owner` the key is its own owner;
    pass an existing owner to rotate keys without losing access to its images and edits."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = new_id("key")
    row = ApiKey(id=key_id, owner=owner or key_id, name=name, key_hash=hash_key(key), prefix=key[:10])
    session.add(row)
    session.commit()
    return row, key


def owner_for_hash(session: Session, key_hash: str) -> str | None:
    """The owner of a live (not revoked) key given its `hash_key`, or None (one indexed lookup)."""
    return session.scalar(select(ApiKey.owner).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))


def revoke_key(session: Session, key_id: str, *, redis_url: str | None) -> bool:
    """Revoke the key, then announce it on `redis_url` (the deployment's REDIS_URL) so every API replica
    forgets it at once (api/key_revocations.py); None: a deployment without Redis. False: no such live key."""
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.commit()
    announce(redis_url, row.key_hash)
    return True


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))
