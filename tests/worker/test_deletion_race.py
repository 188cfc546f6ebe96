"""H4: deleting a photo while an edit of it runs leaves nothing of it behind.

A deletion (`DELETE /v1/images/{id}`, `DELETE /v1/me/data`, retention) cancels the edit, deletes the objects,
then the rows; the worker may still be inverting. Here the deletion lands at the worst moment, from the
pipeline's own progress callback: after the inversion is computed, before the job stores it in the cache (or
while it renders, before it stores the results). The job is the real one (`run_edit`, dev bundle, PostgreSQL,
local storage); afterwards no object may be left, and none may hold the photo's bytes. And the backstop: the
orphan sweep deletes objects whose row is gone, on local storage and on S3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from common.models import Edit, Image, Upload, new_id, utcnow
from common.retention import purge_image, purge_owner, sweep_orphans
from common.settings import Settings
from common.storage import LocalStorage, S3Storage
from common.storage_layout import inversion_key, original_key, preview_key, result_key, upload_key
from common.topology import SWEEP_ORPHANS
from tests.conftest import REPO_ROOT, face_jpeg
from tests.services.rows import starting_edit, stored_image
from worker.edit_job import run_edit
from worker.retention import run_orphan_sweep
from worker.runtime import Runtime

pytestmark = [pytest.mark.trust, pytest.mark.services]

PREFIXES = ("originals/", "inversions/", "results/", "uploads/")


class _PurgingEditor:
    """The worker's real Editor; `purge` runs the moment `stage` reports it is done."""

    def __init__(self, editor, stage: str, purge: Callable[[], None]):
        self._editor, self._stage, self._purge = editor, stage, purge

    def __getattr__(self, name):
        return getattr(self._editor, name)

    def _hooked(self, progress):
        def report(stage: str, fraction: float) -> None:
            if progress is not None:
                progress(stage, fraction)
            if stage == self._stage and fraction == 1.0:
                self._purge()

        return report

    def invert(self, photo, progress=None, **kwargs):
        return self._editor.invert(photo, progress=self._hooked(progress), **kwargs)

    def edit(self, *args, progress=None, **kwargs):
        return self._editor.edit(*args, progress=self._hooked(progress), **kwargs)

    def render(self, *args, progress=None, on_preview=None, **kwargs):
        return self._editor.render(*args, progress=self._hooked(progress), on_preview=self._preview(on_preview),
                                   **kwargs)

    def _preview(self, on_preview):
        """Stages `preview` (the deletion lands before the worker stores the preview) and `preview-stored`
        (right after it did)."""
        if on_preview is None:
            return None

        def hand_over(preview) -> None:
            if self._stage == "preview":
                self._purge()
            on_preview(preview)
            if self._stage == "preview-stored":
                self._purge()

        return hand_over


class RacedRuntime(Runtime):
    """The worker's runtime, with a deletion landing when the editor finishes `stage`."""

    def __init__(self, settings: Settings, stage: str, purge: Callable[[Runtime], None]):
        super().__init__(settings)
        self.stage, self.purge = stage, purge

    def editor(self):
        return _PurgingEditor(super().editor(), self.stage, lambda: self.purge(self))


def _photo_and_edit(runtime: Runtime, owner: str) -> tuple[str, str, bytes]:
    photo = face_jpeg()
    image_id = stored_image(runtime.session_factory, runtime.storage, photo, owner)
    return image_id, starting_edit(runtime.session_factory, image_id, owner), photo


def _settings(database_url: str, redis_url: str, root, dev_bundle) -> Settings:
    # no webhook on these edits: the broker is named but never sent to
    tag = uuid.uuid4().hex[:8]
    return Settings(database_url=database_url, redis_url=redis_url, edits_queue=f"edits-{tag}", io_queue=f"io-{tag}",
                    storage_dir=root / "store", cache_dir=root / "cache", model_dir=dev_bundle,
                    cancel_check_seconds=60, progress_write_seconds=60,
                    default_inversion="e4e")  # e4e's cache key is the one these tests read; fmt: skip


def _everything(storage) -> dict[str, bytes]:
    return {key: storage.get(key) for prefix in PREFIXES for key in storage.list(prefix)}


def _purge_image(image_id: str):
    def purge(runtime: Runtime) -> None:  # DELETE /v1/images/{id}
        with runtime.session_factory() as session:
            purge_image(session, runtime.storage, image_id)

    return purge


def _purge_owner(owner: str):
    def purge(runtime: Runtime) -> None:  # DELETE /v1/me/data
        with runtime.session_factory() as session:
            purge_owner(session, runtime.storage, owner)

    return purge


@pytest.mark.parametrize(("how", "stage"), [("image", "invert"), ("owner", "invert"), ("image", "synthesize"),
                                           ("image", "preview"), ("owner", "preview-stored")])
def test_a_deletion_during_the_edit_leaves_nothing_behind(fresh_pg_url, redis_url, dev_bundle, tmp_path, stage, how):
    owner = f"racer-{uuid.uuid4().hex[:6]}"
    runtime = RacedRuntime(_settings(fresh_pg_url, redis_url, tmp_path, dev_bundle), stage, lambda runtime: None)
    image_id, edit_id, photo = _photo_and_edit(runtime, owner)
    runtime.purge = _purge_image(image_id) if how == "image" else _purge_owner(owner)

    outcome = run_edit(runtime, edit_id)

    assert outcome in ("canceled", "lost")  # the job noticed it lost its row (after the cache, or at the end)
    left = _everything(runtime.storage)
    assert left == {}, f"left behind after the deletion: {sorted(left)}"
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Image).where(Image.owner == owner)) == 0
        assert session.get(Edit, edit_id) is None


def test_the_inversion_cache_holds_no_photo_bytes(fresh_pg_url, redis_url, dev_bundle, tmp_path):
    """The original is stored once; its deletion must not depend on finding copies. A cache written by an
    older version (format 1, the photo inside) is a miss, overwritten without the photo."""
    runtime = Runtime(_settings(fresh_pg_url, redis_url, tmp_path, dev_bundle))
    image_id, edit_id, photo = _photo_and_edit(runtime, "alice")
    key = inversion_key(image_id, runtime.editor().encoder_version)
    runtime.storage.put(key, _format_1_blob(photo))
    assert run_edit(runtime, edit_id) == "succeeded"
    with runtime.session_factory() as session:
        assert session.get(Edit, edit_id).metrics["inversion_cached"] is False
    assert runtime.storage.list(f"inversions/{image_id}/") == [key]
    cached = runtime.storage.get(key)
    assert cached and photo[2000:2064] not in cached and len(cached) < len(photo) // 2


def _format_1_blob(photo: bytes) -> bytes:
    """The cache format that embedded the photo (before H4 was fixed)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, format=np.int64(1), codes=np.zeros((14, 512), np.float32), quad=np.zeros((4, 2)),
             qsize=np.float64(1), n_faces=np.int64(1), note=np.str_(""), photo=np.frombuffer(photo, np.uint8),
             photo_size=np.array([1, 1], np.int64), versions=np.str_("{}"))  # fmt: skip
    return buf.getvalue()


# --- the backstop: objects without a row --------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return S3Storage(Settings(
        storage_backend="s3", s3_endpoint_url=request.getfixturevalue("s3_endpoint"),
        s3_bucket=f"orphans-{uuid.uuid4().hex[:8]}", s3_access_key_id="testing", s3_secret_access_key="testing",
        s3_create_bucket=True,
    ))  # fmt: skip


def test_the_sweep_deletes_objects_without_a_row_and_only_those(fresh_pg_url, storage):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    engine = create_engine(fresh_pg_url)
    factory = sessionmaker(engine, expire_on_commit=False)
    now = utcnow()
    with factory() as session:
        image = Image(id=new_id("img"), owner="o", format="jpeg", width=1, height=1, bytes=1, sha256="0" * 64)
        session.add(image)
        session.flush()
        edits = {status: Edit(id=new_id("edt"), owner="o", image_id=image.id, changes=[{"neutral": "a", "target": "b", "weight": 1.0}], alphas=[1.0],
                              beta=0.1, mode="global", output_format="jpeg", status=status, attempt=1,
                              deadline_at=now + timedelta(hours=1))
                 for status in ("succeeded", "processing", "failed")}  # fmt: skip
        session.add_all(edits.values())
        slot = Upload(id=new_id("upl"), owner="o", max_bytes=10, expires_at=now + timedelta(hours=1))
        used = Upload(id=new_id("upl"), owner="o", max_bytes=10, expires_at=now + timedelta(hours=1),
                      image_id=image.id)
        session.add_all([slot, used])
        session.commit()
    gone_image, gone_edit, gone_upload = new_id("img"), new_id("edt"), new_id("upl")
    keep = [original_key(image.id), inversion_key(image.id, "enc"), result_key(edits["succeeded"].id, 0, "jpg"),
            result_key(edits["processing"].id, 0, "jpg"), upload_key(slot.id), "elsewhere/x",
            preview_key(edits["processing"].id)]  # a preview only while its edit processes
    orphans = [original_key(gone_image), inversion_key(gone_image, "enc"), result_key(gone_edit, 0, "jpg"),
               result_key(edits["failed"].id, 0, "jpg"), upload_key(gone_upload), upload_key(used.id),
               preview_key(edits["succeeded"].id), preview_key(edits["failed"].id), preview_key(gone_edit)]
    for key in keep + orphans:
        storage.put(key, b"bytes")
    try:
        with factory() as session:
            # within the grace period nothing goes: a photo is stored just before its row is committed
            assert sweep_orphans(session, storage, written_before=now - timedelta(hours=1)) == 0
            assert sweep_orphans(session, storage, written_before=utcnow() + timedelta(minutes=1), batch=2) == 9
        left = sorted(k for prefix in (*PREFIXES, "elsewhere/") for k in storage.list(prefix))
        assert left == sorted(keep)
        assert run_orphan_sweep(factory, storage, grace=timedelta(minutes=-1)) == 0  # the task's body: idempotent
    finally:
        engine.dispose()


def test_the_sweep_deletes_a_photo_half_written_by_a_killed_process(fresh_pg_url, tmp_path):
    """A local write goes to a temporary file renamed over the key; a process killed in between leaves the
    photo in a `.tmp-*` file that no key names. The sweep finds it once it is older than the grace."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    storage = LocalStorage(tmp_path / "store")
    partial = tmp_path / "store" / "originals" / ".tmp-killed"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(face_jpeg())
    assert storage.list("originals/") == []  # not an object: no key, so no deletion by key would find it
    engine = create_engine(fresh_pg_url)
    try:
        with sessionmaker(engine)() as session:
            assert sweep_orphans(session, storage, written_before=utcnow() - timedelta(hours=1)) == 0  # may be live
            assert sweep_orphans(session, storage, written_before=utcnow() + timedelta(minutes=1)) == 1
    finally:
        engine.dispose()
    assert not partial.exists()


def test_beat_runs_the_sweep_on_the_io_queue():
    """The worker app schedules the sweep (every ORPHAN_SWEEP_INTERVAL_SECONDS, on IO_QUEUE) and registers it."""
    script = ("import json; from worker.app import app; app.loader.import_default_modules(); "
              "print(json.dumps([app.conf.beat_schedule['orphans'], sorted(app.tasks)]))")
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:9/0", "IO_QUEUE": "io-sweep",
           "ORPHAN_SWEEP_INTERVAL_SECONDS": "123"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    entry, tasks = json.loads(out.strip().splitlines()[-1])
    assert entry == {"task": SWEEP_ORPHANS.name, "schedule": 123.0, "options": {"queue": "io-sweep", "expires": 123.0}}
    assert SWEEP_ORPHANS.name in tasks
