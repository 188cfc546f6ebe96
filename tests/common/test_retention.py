"""Retention and deletion against real PostgreSQL and a real (local-folder) storage: expired data
leaves both, other owners' data stays, nothing of a purged owner survives."""

from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from common import idempotency
from common.idempotency import IdempotencyRecord
from common.models import ApiKey, Edit, Image, Upload, WebhookDelivery, new_id, utcnow
from common.retention import expire, purge_owner
from common.storage import LocalStorage
from common.storage_layout import original_key, result_key, upload_key
from common.webhooks import outbox
from worker.retention import run_expiry

pytestmark = [pytest.mark.trust, pytest.mark.services]


@pytest.fixture
def env(fresh_pg_url, tmp_path):
    engine = create_engine(fresh_pg_url)
    yield sessionmaker(engine, expire_on_commit=False), LocalStorage(tmp_path / "storage")
    engine.dispose()


def _photo_with_edit(factory, storage, owner, age=timedelta(0)):
    created = utcnow() - age
    with factory() as s:
        image = Image(id=new_id("img"), owner=owner, format="jpeg", width=64, height=64, bytes=3,
                      sha256="0" * 64, created_at=created)
        s.add(image)
        s.flush()
        edit = Edit(id=new_id("edt"), owner=owner, image_id=image.id, changes=[{"neutral": "a", "target": "b", "weight": 1.0}], alphas=[1.0],
                    beta=0.1, mode="global", output_format="jpeg", status="succeeded", attempt=1,
                    webhook="http://127.0.0.1:9/h", created_at=created, started_at=created,
                    completed_at=created, deadline_at=created + timedelta(hours=1),
                    output_keys=[result_key("x", 0, "jpeg")])
        s.add(edit)
        s.commit()
        outbox.record_events(s, edit)
    storage.put(original_key(image.id), b"img")
    storage.put(f"inversions/{image.id}/enc.npz", b"inv")
    storage.put(result_key(edit.id, 0, "jpeg"), b"res")
    return image.id, edit.id


def _count(factory, model, *where):
    with factory() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_expiry_removes_old_rows_and_objects_only(env):
    factory, storage = env
    old_image, old_edit = _photo_with_edit(factory, storage, "alice", age=timedelta(hours=25))
    new_image, new_edit = _photo_with_edit(factory, storage, "alice")
    with factory() as s:
        s.add(Upload(id=new_id("upl"), owner="alice", max_bytes=10, created_at=utcnow() - timedelta(hours=3),
                     expires_at=utcnow() - timedelta(hours=2)))
        s.commit()
        idempotency.begin(s, "scope", "stale", "fp", ttl=timedelta(seconds=-1))
    purged = run_expiry(factory, storage, timedelta(hours=24))
    assert (purged.images, purged.edits, purged.uploads, purged.idempotency_keys) == (1, 1, 1, 1)
    assert purged.objects == 3
    assert storage.list(f"results/{old_edit}/") == [] and storage.list(original_key(old_image)) == []
    assert storage.list(f"results/{new_edit}/") != [] and storage.size(original_key(new_image)) == 3
    assert _count(factory, WebhookDelivery, WebhookDelivery.edit_id == old_edit) == 0
    assert _count(factory, WebhookDelivery, WebhookDelivery.edit_id == new_edit) == 3
    assert _count(factory, Upload) == 0


def test_expiry_cancels_running_edits_first(env):
    factory, storage = env
    image_id, edit_id = _photo_with_edit(factory, storage, "bob", age=timedelta(hours=30))
    with factory() as s:
        s.get(Edit, edit_id).status = "processing"
        s.commit()
        assert expire(s, storage, utcnow() - timedelta(hours=24)).edits == 1
    assert _count(factory, Edit) == 0


def test_purge_owner_leaves_nothing_and_spares_others(env):
    factory, storage = env
    mine = [_photo_with_edit(factory, storage, "carol") for _ in range(2)]
    theirs = _photo_with_edit(factory, storage, "dave")
    with factory() as s:
        s.add(ApiKey(id=new_id("key"), owner="carol", name="k", key_hash="h" * 64, prefix="fe_"))
        upload = Upload(id=new_id("upl"), owner="carol", max_bytes=10, expires_at=utcnow() + timedelta(hours=1))
        s.add(upload)
        s.commit()
        idempotency.begin(s, "h" * 64, "k1", "fp")
        idempotency.begin(s, "other", "k1", "fp")
    storage.put(upload_key(upload.id), b"partial")
    with factory() as s:
        purged = purge_owner(s, storage, "carol")
    assert (purged.images, purged.edits, purged.uploads, purged.idempotency_keys) == (2, 2, 1, 1)
    for model in (Image, Edit, Upload, WebhookDelivery):
        assert _count(factory, model, model.owner == "carol") == 0
    assert _count(factory, IdempotencyRecord, IdempotencyRecord.scope == "other") == 1
    remaining = [k for prefix in ("originals", "inversions", "results", "uploads") for k in storage.list(prefix)]
    assert all(mine_id not in key for ids in mine for mine_id in ids for key in remaining)
    assert original_key(theirs[0]) in remaining and f"results/{theirs[1]}/0.jpeg" in remaining
    assert _count(factory, Edit, Edit.owner == "dave") == 1
