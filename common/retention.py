"""Deleting user data: one image with everything derived from it, everything of one owner, and
whatever is older than the retention period (the periodic task in worker.retention calls `expire`).

Storage objects are deleted before the rows that name them, so an interrupted purge leaves rows
pointing at nothing (and the next run finishes the job) rather than objects nobody can find.
Running edits are canceled first; their worker notices and discards its outputs, and a worker that
stores something after the purge deleted the objects sees the cancel and deletes it (write, then
verify: worker/edit_job.py). `sweep_orphans` (periodic) deletes whatever still escaped: objects whose
key names a row that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from common import idempotency, lifecycle
from common.idempotency import IdempotencyRecord
from common.models import ApiKey, Edit, Image, Upload, WebhookDelivery, utcnow
from common.storage import Storage, StoredObject
from common.storage_layout import (
    AREAS,
    RESULTS,
    Area,
    inversions_prefix,
    is_preview,
    original_key,
    owner_of,
    results_prefix,
    upload_key,
)

UPLOAD_GRACE = timedelta(hours=1)


@dataclass
class Purged:
    images: int = 0
    edits: int = 0
    uploads: int = 0
    objects: int = 0
    idempotency_keys: int = 0

    def __iadd__(self, other: Purged) -> Purged:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def purge_image(session: Session, storage: Storage, image_id: str) -> Purged:
    """Delete a photo, its inversions, every edit made from it (results and webhook log). Commits."""
    edit_ids = list(session.scalars(select(Edit.id).where(Edit.image_id == image_id)))
    for edit_id in edit_ids:
        lifecycle.cancel(session, edit_id)
    objects = storage.delete_prefix(original_key(image_id))
    objects += storage.delete_prefix(inversions_prefix(image_id))
    for edit_id in edit_ids:
        objects += storage.delete_prefix(results_prefix(edit_id))
    if edit_ids:
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.edit_id.in_(edit_ids)))
    session.execute(delete(Edit).where(Edit.image_id == image_id))
    images = session.execute(delete(Image).where(Image.id == image_id)).rowcount
    session.commit()
    # once more with the row gone: an inversion prepared at upload (worker.detection) and written after the
    # first pass, whose writer looked for the row before the commit, is caught here
    objects += storage.delete_prefix(inversions_prefix(image_id))
    return Purged(images=images, edits=len(edit_ids), objects=objects)


def _purge_uploads(session: Session, storage: Storage, uploads: list[str]) -> Purged:
    objects = sum(storage.delete_prefix(upload_key(upload_id)) for upload_id in uploads)
    if uploads:
        session.execute(delete(Upload).where(Upload.id.in_(uploads)))
        session.commit()
    return Purged(uploads=len(uploads), objects=objects)


def purge_owner(session: Session, storage: Storage, owner: str, extra_scopes: tuple[str, ...] = ()) -> Purged:
    """Delete everything `owner` ever stored: photos, inversions, edits, results, uploads, webhook log,
    and remembered idempotent responses (they contain resource bodies). API keys stay (they are the
    account, not its data). `extra_scopes`: idempotency scopes of keys without a row (the dev key)."""
    total = Purged()
    for image_id in session.scalars(select(Image.id).where(Image.owner == owner)).all():
        total += purge_image(session, storage, image_id)
    uploads = list(session.scalars(select(Upload.id).where(Upload.owner == owner)))
    total += _purge_uploads(session, storage, uploads)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.owner == owner))
    scopes = list(session.scalars(select(ApiKey.key_hash).where(ApiKey.owner == owner))) + list(extra_scopes)
    if scopes:
        total.idempotency_keys = session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.scope.in_(scopes))).rowcount or 0
    session.commit()
    return total


def expire(session: Session, storage: Storage, cutoff: datetime, batch: int = 500) -> Purged:
    """Delete photos (with their edits) and uploads created before `cutoff`, and expired idempotency
    keys. Works in batches so one run stays short; the next run continues."""
    total = Purged()
    old_images = session.scalars(select(Image.id).where(Image.created_at < cutoff).limit(batch)).all()
    for image_id in old_images:
        total += purge_image(session, storage, image_id)
    now = utcnow()
    # Unclaimed slots go an hour after their URL expired (a slow upload may still be claimed).
    abandoned = Upload.image_id.is_(None) & (Upload.expires_at < now - UPLOAD_GRACE)
    old_uploads = list(session.scalars(
        select(Upload.id).where((Upload.created_at < cutoff) | abandoned).limit(batch)))
    total += _purge_uploads(session, storage, old_uploads)
    total.idempotency_keys = idempotency.purge_expired(session, now)
    return total


# --- objects without a row ---------------------------------------------------------------------------

# The owning table of each storage area (common.storage_layout) → its model.
_MODELS = {model.__tablename__: model for model in (Image, Edit, Upload)}


def sweep_orphans(session: Session, storage: Storage, written_before: datetime, batch: int = 1000) -> int:
    """Delete stored objects whose row is gone: photos and inversions without an image, results without an
    edit (or of a failed or canceled one), uploads without an unconsumed slot. Objects written at or after
    `written_before` are left alone: their row may not be committed yet (a photo is stored just before its
    row). Returns how many objects were deleted; keys of no known shape are never touched."""
    deleted = 0
    for area in AREAS:
        page: list[StoredObject] = []
        for item in storage.list_objects(area.prefix):
            if item.modified < written_before:
                page.append(item)
            if len(page) >= batch:
                deleted += _delete_orphans(session, storage, area, page)
                page = []
        deleted += _delete_orphans(session, storage, area, page)
    return deleted


def _delete_orphans(session: Session, storage: Storage, area: Area, items: list[StoredObject]) -> int:
    by_id: dict[str, list[str]] = {}
    for item in items:
        if row_id := owner_of(area, item.key):
            by_id.setdefault(row_id, []).append(item.key)
    if not by_id:
        return 0
    live = _live_ids(session, _MODELS[area.table], by_id)
    previewing = _previewing_ids(session, by_id) if area is RESULTS else set()
    session.rollback()  # a read-only look: end the transaction
    orphans = [key for row_id, keys in by_id.items() for key in keys
               if row_id not in (previewing if is_preview(key) else live)]
    return storage.delete(orphans) if orphans else 0


def _previewing_ids(session: Session, ids: Iterable[str]) -> set[str]:
    """The edits whose preview may still be wanted: those processing (once an edit ends, its preview was
    replaced by the full-size output, or the run that made it failed or was canceled)."""
    return set(session.scalars(select(Edit.id).where(Edit.id.in_(list(ids)),
                                                     Edit.status == lifecycle.EditStatus.PROCESSING)))


def _live_ids(session: Session, model, ids: Iterable[str]) -> set[str]:
    """The ids whose objects must stay: the row exists and still wants them."""
    query = select(model.id).where(model.id.in_(list(ids)))
    if model is Edit:  # a failed or canceled edit has no outputs; leftovers of its run are garbage
        query = query.where(Edit.status.not_in((lifecycle.EditStatus.FAILED, lifecycle.EditStatus.CANCELED)))
    elif model is Upload:  # a consumed slot's bytes became an image; the image keeps its own copy
        query = query.where(Upload.image_id.is_(None))
    return set(session.scalars(query))
