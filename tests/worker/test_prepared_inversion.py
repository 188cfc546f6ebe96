"""A photo's detection keeps its faces' landmarks, and the upload's task inverts the largest faces while the
person writes the text (#25, worker/detection.py): run in-process on the development bundle (real detection,
alignment and e4e) against a real database, local storage and Redis.

What a person sees: the first edit of a photo finds its inversion done. What an attacker or a race could do:
a stored detection that is malformed (any worker falls back to detecting), a photo deleted while its
inversion is prepared (nothing left behind), a photo without a usable face (detection done, nothing
prepared, no error)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import update

from common.db import upgrade
from common.models import Edit
from common.models import Image as ImageRow
from common.retention import purge_image
from common.storage_layout import inversion_key, inversions_prefix
from tests.pipeline.images import golden_face, gradient_image, png_bytes, two_faces
from tests.services.rows import starting_edit, stored_image
from tests.services.settings import local_settings
from worker import inversion_cache
from worker.detection import run_detection, stored_detection
from worker.edit_job import run_edit
from worker.inversion_cache import preparing
from worker.runtime import Runtime

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def runtime(dev_bundle, redis_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    database = f"sqlite:///{root / 'db.sqlite'}"
    upgrade(database)
    return Runtime(local_settings(database, root / "store", redis_url=redis_url, cache_dir=root / "cache",
                                  model_dir=dev_bundle, prepare_inversions=1))


@pytest.fixture(scope="module")
def face_photo():
    return png_bytes(golden_face()[0])


@pytest.fixture(scope="module")
def pair():
    return png_bytes(two_faces(height=300, gap=60))


def _image(runtime: Runtime, photo: bytes) -> str:
    return stored_image(runtime.session_factory, runtime.storage, photo, format="png")


def _row(runtime: Runtime, model, key):
    with runtime.session_factory() as session:
        return session.get(model, key)


def _inversions(runtime: Runtime, image_id: str) -> list[str]:
    return sorted(runtime.storage.list(inversions_prefix(image_id)))


def _with(runtime: Runtime, monkeypatch, **settings) -> None:
    monkeypatch.setattr(runtime, "settings", runtime.settings.model_copy(update=settings))


def test_the_upload_prepares_the_largest_face_and_the_first_edit_finds_it(runtime, face_photo):
    image_id = _image(runtime, face_photo)
    assert run_detection(runtime, image_id) == "done"
    encoder = runtime.editor().encoder_version
    assert _inversions(runtime, image_id) == [inversion_key(image_id, encoder, 0)]
    image = _row(runtime, ImageRow, image_id)
    assert len(image.landmarks) == len(image.faces) == 1 and np.asarray(image.landmarks[0]).shape == (68, 2)
    assert "landmarks" not in image.faces[0]  # kept beside what is served, not in it

    edit_id = starting_edit(runtime.session_factory, image_id, alphas=(2.0,), output_format="png")
    assert run_edit(runtime, edit_id) == "succeeded"
    metrics = _row(runtime, Edit, edit_id).metrics
    assert metrics["inversion_cached"] is True and "invert_seconds" not in metrics


def test_the_prepared_inversion_is_the_one_the_edit_would_have_computed(runtime, face_photo):
    """Landmarks kept at full precision: aligning from the stored detection gives exactly the codes of a fresh
    detection (so a prepared inversion and an edit's own are interchangeable)."""
    from pipeline import Inversion

    image_id = _image(runtime, face_photo)
    run_detection(runtime, image_id)
    prepared = Inversion.from_bytes(runtime.storage.get(inversion_key(image_id, runtime.editor().encoder_version, 0)))
    fresh = runtime.editor().invert(face_photo, face=0)
    np.testing.assert_array_equal(prepared.codes, fresh.codes)
    np.testing.assert_array_equal(prepared.quad, fresh.quad)
    assert prepared.box == fresh.box


def test_an_edit_aligns_from_the_stored_landmarks_without_searching_the_photo(runtime, face_photo, monkeypatch):
    image_id = _image(runtime, face_photo)
    _with(runtime, monkeypatch, prepare_inversions=0)
    run_detection(runtime, image_id)
    assert _inversions(runtime, image_id) == []
    editor = runtime.editor()
    searched = []
    monkeypatch.setattr(editor, "_find_faces", lambda *args: searched.append(args) or [])
    edit_id = starting_edit(runtime.session_factory, image_id, alphas=(1.0,), output_format="png")
    assert run_edit(runtime, edit_id) == "succeeded"
    assert searched == [] and _row(runtime, Edit, edit_id).metrics["inversion_cached"] is False


@pytest.mark.parametrize("landmarks", [
    None,                                   # a row from before landmarks were kept
    "not a list",
    [],                                     # fewer than the faces
    [[[1.0, 2.0]] * 67],                    # 67 points
    [[["x", 2.0]] * 68],                    # not numbers
    [[[float("nan"), 2.0]] * 68],           # not finite
    [[[1.0, 2.0, 3.0]] * 68],               # not pairs
])
def test_a_stored_detection_that_does_not_fit_is_detected_again(runtime, face_photo, monkeypatch, landmarks):
    image_id = _image(runtime, face_photo)
    _with(runtime, monkeypatch, prepare_inversions=0)
    run_detection(runtime, image_id)
    with runtime.session_factory() as session:
        session.execute(update(ImageRow).where(ImageRow.id == image_id).values(landmarks=landmarks))
        session.commit()
    assert stored_detection(_row(runtime, ImageRow, image_id)) is None
    edit_id = starting_edit(runtime.session_factory, image_id, alphas=(1.0,), output_format="png")
    assert run_edit(runtime, edit_id) == "succeeded"


def test_off_prepares_nothing_and_a_group_photo_prepares_as_many_as_asked(runtime, pair, monkeypatch):
    _with(runtime, monkeypatch, prepare_inversions=0)
    off = _image(runtime, pair)
    run_detection(runtime, off)
    assert _inversions(runtime, off) == []

    _with(runtime, monkeypatch, prepare_inversions=2)
    both = _image(runtime, pair)
    run_detection(runtime, both)
    encoder = runtime.editor().encoder_version
    assert _inversions(runtime, both) == sorted(inversion_key(both, encoder, f) for f in (0, 1))

    _with(runtime, monkeypatch, prepare_inversions=6)  # more than the photo has: its two
    all_of_them = _image(runtime, pair)
    run_detection(runtime, all_of_them)
    assert len(_inversions(runtime, all_of_them)) == 2


def test_an_edit_already_on_its_way_inverts_itself_and_nothing_is_prepared(runtime, face_photo):
    """A client that uploads and submits at once: the edit, queued before the upload's task ran, inverts the
    face itself (its preview before e4e's last heads), so the task does not compute it first, nor twice."""
    image_id = _image(runtime, face_photo)
    edit_id = starting_edit(runtime.session_factory, image_id, alphas=(1.0,), output_format="png")
    assert run_detection(runtime, image_id) == "done" and _inversions(runtime, image_id) == []
    assert run_edit(runtime, edit_id) == "succeeded"
    assert _row(runtime, Edit, edit_id).metrics["inversion_cached"] is False
    assert _inversions(runtime, image_id) == [inversion_key(image_id, runtime.editor().encoder_version, 0)]


def test_an_edit_that_misses_the_cache_while_the_face_is_prepared_waits_for_it(runtime, face_photo, monkeypatch):
    """Another worker is preparing the face (its mark in Redis): the edit waits for that inversion instead of
    computing it beside it, and uses it once written."""
    import threading

    image_id = _image(runtime, face_photo)
    _with(runtime, monkeypatch, prepare_inversions=0)
    run_detection(runtime, image_id)
    editor = runtime.editor()
    key = inversion_key(image_id, editor.encoder_version, 0)
    prepared = editor.invert(face_photo).to_bytes()
    claimed, release = threading.Event(), threading.Event()

    def another_worker():
        with preparing(runtime, key) as ours:
            assert ours
            claimed.set()
            release.wait(5)
            runtime.storage.put(key, prepared)

    thread = threading.Thread(target=another_worker)
    thread.start()
    claimed.wait(5)
    monkeypatch.setattr(editor, "invert", lambda *a, **k: pytest.fail("the edit inverted the face itself"))
    threading.Timer(0.3, release.set).start()
    edit_id = starting_edit(runtime.session_factory, image_id, alphas=(1.0,), output_format="png")
    assert run_edit(runtime, edit_id) == "succeeded"
    thread.join(5)
    assert _row(runtime, Edit, edit_id).metrics["inversion_cached"] is True


def test_a_mark_left_by_a_worker_that_died_delays_an_edit_at_most_the_bound(runtime, face_photo, monkeypatch):
    image_id = _image(runtime, face_photo)
    _with(runtime, monkeypatch, prepare_inversions=0)
    run_detection(runtime, image_id)
    key = inversion_key(image_id, runtime.editor().encoder_version, 0)
    monkeypatch.setattr(inversion_cache, "WAIT_FOR_PREPARED_S", 0.3)
    with preparing(runtime, key) as ours:  # held, never written: as by a worker killed mid-inversion
        assert ours
        edit_id = starting_edit(runtime.session_factory, image_id, alphas=(1.0,), output_format="png")
        assert run_edit(runtime, edit_id) == "succeeded"
    assert _row(runtime, Edit, edit_id).metrics["inversion_cached"] is False
    assert runtime.redis().exists(f"{runtime.settings.edits_queue}:preparing:{key}") == 0  # let go on the way out


def test_a_canceled_edit_stops_waiting_for_another_workers_inversion(runtime, face_photo, monkeypatch):
    image_id = _image(runtime, face_photo)
    key = inversion_key(image_id, runtime.editor().encoder_version, 0)
    monkeypatch.setattr(inversion_cache, "WAIT_FOR_PREPARED_S", 2.0)
    asked = []
    with preparing(runtime, key):
        found = inversion_cache.wait_for_prepared(runtime, key, 0, should_cancel=lambda: asked.append(1) or True)
    assert found is None and asked == [1]  # asked once, then gone at once, not after the bound


def test_a_face_another_worker_prepares_is_not_prepared_twice(runtime, face_photo):
    image_id = _image(runtime, face_photo)
    key = inversion_key(image_id, runtime.editor().encoder_version, 0)
    with preparing(runtime, key) as ours:
        assert ours
        with preparing(runtime, key) as second:
            assert not second
        assert run_detection(runtime, image_id) == "done" and _inversions(runtime, image_id) == []


def test_a_photo_without_a_face_is_detected_and_nothing_is_prepared(runtime):
    image_id = _image(runtime, png_bytes(gradient_image(320, 240)))
    assert run_detection(runtime, image_id) == "done"
    image = _row(runtime, ImageRow, image_id)
    assert image.faces == [] and image.landmarks == [] and _inversions(runtime, image_id) == []


def test_a_photo_deleted_while_its_inversion_is_prepared_leaves_nothing(runtime, face_photo, monkeypatch):
    """The deletion lands between the inversion and its write: the task sees the row gone and deletes it."""
    image_id = _image(runtime, face_photo)
    editor = runtime.editor()
    invert = editor.invert

    def deleted_meanwhile(*args, **kwargs):
        inversion = invert(*args, **kwargs)
        with runtime.session_factory() as session:
            purge_image(session, runtime.storage, image_id)
        return inversion

    monkeypatch.setattr(editor, "invert", deleted_meanwhile)
    run_detection(runtime, image_id)
    assert _row(runtime, ImageRow, image_id) is None and _inversions(runtime, image_id) == []


def test_a_write_between_the_purge_and_its_commit_is_caught_by_the_second_pass(runtime, face_photo, monkeypatch):
    """The window the task's own check cannot see: its write lands after the purge deleted the inversions but
    before the row is gone (the task looked, found the row, kept the object). The purge's pass after its
    commit deletes it."""
    from pipeline import Inversion

    image_id = _image(runtime, face_photo)
    key = inversion_key(image_id, runtime.editor().encoder_version, 0)
    late = runtime.editor().invert(face_photo).to_bytes()
    storage = runtime.storage
    delete_prefix = storage.delete_prefix
    writes = []

    def then_a_late_write(prefix: str) -> int:
        deleted = delete_prefix(prefix)
        if prefix == inversions_prefix(image_id) and not writes:
            storage.put(key, late)
            writes.append(key)
        return deleted

    monkeypatch.setattr(storage, "delete_prefix", then_a_late_write)
    with runtime.session_factory() as session:
        purge_image(session, storage, image_id)
    assert writes == [key] and _inversions(runtime, image_id) == []
    assert Inversion.from_bytes(late).face_index == 0
