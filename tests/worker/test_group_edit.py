"""The edit job on group photos, several changes and outputs as they come (#17, #16.1), run in-process on the
development bundle (random faces, real detection, alignment, inversion and paste-back) against a real
database, local storage and Redis: detection stored once, `faces: "all"` edits both faces and a list only the
ones named, an inversion cache per face, one change of weight 1 renders exactly the one-change form, each
strength reaches the row and its `output` webhook before the next, and a cancel between strengths keeps what
is finished."""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from common import lifecycle
from common.db import upgrade
from common.edit_resource import edit_input, edit_resource
from common.models import Edit, WebhookDelivery, new_id
from common.models import Image as ImageRow
from common.settings import Settings
from common.storage_layout import inversion_key
from tests.pipeline.images import png_bytes, two_faces
from tests.services.rows import starting_edit, stored_image
from worker.detection import run_detection
from worker.edit_job import run_edit
from worker.runtime import Runtime

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def runtime(dev_bundle, redis_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    database = f"sqlite:///{root / 'db.sqlite'}"
    upgrade(database)
    tag = uuid.uuid4().hex[:8]
    runtime = Runtime(Settings(database_url=database, storage_dir=root / "store", cache_dir=root / "cache",
                               model_dir=dev_bundle, redis_url=redis_url, io_queue=f"io-{tag}",
                               edits_queue=f"edits-{tag}", webhooks_queue=f"webhooks-{tag}",
                               cancel_check_seconds=0.05, progress_write_seconds=60,
                               default_inversion="e4e"))  # fmt: skip
    yield runtime
    from redis import Redis

    Redis.from_url(redis_url).delete(f"io-{tag}", f"edits-{tag}", f"webhooks-{tag}")


@pytest.fixture(scope="module")
def pair():
    """Two people side by side with a grey gap, as PNG bytes."""
    return png_bytes(two_faces(height=300, gap=60))


@pytest.fixture(scope="module")
def shared(runtime, pair):
    """One photo for the tests that do not look at its first inversion (they reuse the cached one)."""
    return _image(runtime, pair)


def _image(runtime: Runtime, photo: bytes) -> str:
    return stored_image(runtime.session_factory, runtime.storage, photo, format="png")


def _edit(runtime: Runtime, image_id: str, alphas=(2.0,), **fields) -> str:
    return starting_edit(runtime.session_factory, image_id, alphas=alphas, output_format="png", **fields)


def _row(runtime: Runtime, model, key):
    with runtime.session_factory() as session:
        return session.get(model, key)


def _pixels(runtime: Runtime, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(runtime.storage.get(key))).convert("RGB"), dtype=np.int16)


def _changed(after: np.ndarray, before: np.ndarray, box) -> float:
    left, top, right, bottom = box
    return float(np.abs(after[top:bottom, left:right] - before[top:bottom, left:right]).mean())


def test_faces_are_detected_once_and_stored_on_the_image(runtime, pair):
    image_id = _image(runtime, pair)
    assert _row(runtime, ImageRow, image_id).faces_status == "pending"
    assert run_detection(runtime, image_id) == "done"
    image = _row(runtime, ImageRow, image_id)
    assert image.faces_status == "done" and [f["index"] for f in image.faces] == [0, 1]
    (l0, t0, r0, b0), (l1, t1, r1, b1) = (f["box"] for f in image.faces)
    assert (r0 <= l1 or r1 <= l0) and min(r0 - l0, b0 - t0, r1 - l1, b1 - t1) > 20  # two faces, apart
    assert all(0 < f["score"] <= 1 for f in image.faces)
    assert run_detection(runtime, image_id) == "done already"
    assert run_detection(runtime, new_id("img")) == "gone"


def test_all_faces_then_one_face_with_an_inversion_cache_per_face(runtime, pair):
    image_id = _image(runtime, pair)  # not detected yet: the job detects and stores the faces itself
    original = np.asarray(Image.open(io.BytesIO(pair)).convert("RGB"), dtype=np.int16)

    both = _edit(runtime, image_id, faces="all")
    assert run_edit(runtime, both) == "succeeded"
    edit = _row(runtime, Edit, both)
    faces = _row(runtime, ImageRow, image_id).faces
    assert len(faces) == 2 and _row(runtime, ImageRow, image_id).faces_status == "done"
    assert [(f["index"], f["inversion_cached"]) for f in edit.metrics["faces"]] == [(0, False), (1, False)]
    assert all(f["invert_seconds"] > 0 for f in edit.metrics["faces"]) and edit.metrics["inversion_cached"] is False
    result = _pixels(runtime, edit.output_keys[0])
    assert _changed(result, original, faces[0]["box"]) > 3 and _changed(result, original, faces[1]["box"]) > 3
    encoder = runtime.editor().encoder_version
    assert sorted(runtime.storage.list(f"inversions/{image_id}/")) == sorted(
        inversion_key(image_id, encoder, f) for f in (0, 1))
    assert len(edit.likeness) == 1 and -1 <= edit.likeness[0] <= 1  # the dev bundle has an identity model

    second = _edit(runtime, image_id, faces=[1])
    assert run_edit(runtime, second) == "succeeded"
    edit = _row(runtime, Edit, second)
    assert edit.metrics["faces"] == [{"index": 1, "inversion_cached": True}] and edit.metrics["inversion_cached"]
    result = _pixels(runtime, edit.output_keys[0])
    assert _changed(result, original, faces[0]["box"]) == 0  # the other person is untouched
    assert _changed(result, original, faces[1]["box"]) > 3


def test_an_index_the_photo_does_not_have_fails_the_job_naming_the_range(runtime, pair):
    edit_id = _edit(runtime, _image(runtime, pair), faces=[0, 5])
    assert run_edit(runtime, edit_id) == "failed"
    edit = _row(runtime, Edit, edit_id)
    assert edit.error_code == "invalid_parameter" and "0..1" in edit.error_message and "5" in edit.error_message


def test_one_change_of_weight_one_is_the_one_change_form_exactly(runtime, shared):
    image_id = shared
    old = _edit(runtime, image_id, alphas=(-1.5,))
    new = _edit(runtime, image_id, alphas=(-1.5,),
                changes=[{"neutral": "a face", "target": "a smiling face", "weight": 1.0}])
    two = _edit(runtime, image_id, alphas=(-1.5,),
                changes=[{"neutral": "a face", "target": "a smiling face", "weight": 1.0},
                         {"neutral": "a face", "target": "a face with blue hair", "weight": -0.5}])
    for edit_id in (old, new, two):
        assert run_edit(runtime, edit_id) == "succeeded"
    outputs = {e: [runtime.storage.get(k) for k in _row(runtime, Edit, e).output_keys] for e in (old, new, two)}
    assert outputs[old] == outputs[new]
    assert outputs[two] != outputs[old]  # the second change moved the face too
    resource = edit_resource(_row(runtime, Edit, two), "", None)
    assert resource["input"]["neutral"] is None and len(resource["input"]["changes"]) == 2


def test_each_strength_is_on_the_row_and_its_webhook_before_the_next(runtime, shared):
    edit_id = _edit(runtime, shared, alphas=(-2.0, 0.0, 2.0), webhook="https://hooks.example/e")
    assert run_edit(runtime, edit_id) == "succeeded"
    with runtime.session_factory() as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.edit_id == edit_id)
                               .order_by(WebhookDelivery.created_at, WebhookDelivery.id)).all()
    assert [(r.event, r.output_index) for r in rows] == [
        ("start", 0), ("output", 1), ("output", 0), ("output", 2), ("completed", 0)]  # middle strength first
    seen = [json.loads(r.payload)["data"] for r in rows if r.event == "output"]
    assert [d["status"] for d in seen] == ["processing"] * 3
    assert [[url is not None for url in d["output"]] for d in seen] == [
        [False, True, False], [True, True, False], [True, True, True]]
    assert [[v is not None for v in d["likeness"]] for d in seen][0] == [False, True, False]
    metrics = _row(runtime, Edit, edit_id).metrics
    assert 0 < metrics["first_output_seconds"] < metrics["total_seconds"]


class _CancelAfterFirst(Runtime):
    """The worker's runtime (sharing `base`'s models); the person cancels (as `POST /v1/edits/{id}/cancel`
    does) once the first strength is out."""

    def __init__(self, base: Runtime):
        super().__init__(base.settings)
        self.base = base

    def editor(self):
        real, runtime = self.base.editor(), self

        class Editor:
            def __getattr__(self, name):
                return getattr(real, name)

            def render(self, *args, on_output, **kwargs):
                def out(output):
                    on_output(output)
                    with runtime.session_factory() as session:
                        edit_id = session.scalar(select(Edit.id).where(Edit.status == "processing"))
                        assert lifecycle.cancel(session, edit_id)

                return real.render(*args, on_output=out, **kwargs)

        return Editor()


def test_a_cancel_between_strengths_keeps_the_finished_outputs(runtime, shared):
    canceling = _CancelAfterFirst(runtime)
    edit_id = _edit(canceling, shared, alphas=(-2.0, 0.0, 2.0))
    assert run_edit(canceling, edit_id) == "canceled"
    edit = _row(canceling, Edit, edit_id)
    assert edit.status == "canceled" and edit.output_keys[0] is None and edit.output_keys[2] is None
    assert canceling.storage.list(f"results/{edit_id}/") == [edit.output_keys[1]]
    resource = edit_resource(edit, "http://api", None)
    assert resource["output"] == [None, f"http://api/v1/edits/{edit_id}/outputs/1", None]


def test_without_an_identity_model_likeness_is_absent(runtime, shared, dev_bundle, tmp_path):
    """The same bundle less its optional `identity` entry: the edit has no likeness, and the resource no field."""
    from pathlib import Path

    manifest = json.loads((Path(dev_bundle) / "manifest.json").read_text())
    identity = manifest.pop("identity")["file"]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for item in Path(dev_bundle).iterdir():
        if item.is_file() and item.name not in ("manifest.json", identity):
            (bundle / item.name).symlink_to(item.resolve())
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    plain = Runtime(runtime.settings.model_copy(update={"model_dir": bundle}))
    edit_id = _edit(plain, shared)
    assert run_edit(plain, edit_id) == "succeeded"
    edit = _row(plain, Edit, edit_id)
    assert edit.likeness is None and "likeness" not in edit_resource(edit, "", None)
    assert edit_resource(edit, "", None)["output"][0]


def test_a_text_too_long_for_clip_fails_before_the_inversion(runtime, pair):
    """Within the contract's 200 characters but not CLIP's 77 tokens (a run of one-letter words): the edit
    fails `invalid_parameter` naming the text before any inversion runs or is cached (#23: it used to fail
    only after the inversion)."""
    from common.edit_contract import MAX_TEXT_CHARS
    from common.storage_layout import inversions_prefix

    image_id = _image(runtime, pair)
    text = ("a " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS].strip()
    edit_id = _edit(runtime, image_id, changes=[{"neutral": "a face", "target": "a smiling face", "weight": 1.0},
                                                {"neutral": "a face", "target": text, "weight": 0.5}])
    assert run_edit(runtime, edit_id) == "failed"
    edit = _row(runtime, Edit, edit_id)
    assert edit.error_code == "invalid_parameter" and "too long for CLIP" in edit.error_message
    assert "invert_seconds" not in (edit.metrics or {}) and edit.model  # the models answered, no inversion ran
    assert runtime.storage.list(inversions_prefix(image_id)) == []


def test_an_sfe_edit_succeeds_with_its_own_inversion_cache(runtime, shared):
    """`inversion: "sfe"` (StyleFeatureEditor, in the development bundle): the job inverts and renders with it,
    and caches each face's SFE inversion under its own key, beside (never instead of) e4e's, naming SFE's file
    version (a new SFE file is a new key)."""
    from pipeline import Inversion

    edit_id = _edit(runtime, shared, faces="all", options={"inversion": "sfe"})
    assert run_edit(runtime, edit_id) == "succeeded", _row(runtime, Edit, edit_id).error_message
    assert _row(runtime, Edit, edit_id).spec.inversion == "sfe"
    versions = runtime.editor().versions
    for face in (0, 1):
        blob = runtime.storage.get(inversion_key(shared, versions["encoder"], face, "inversion=sfe", versions["sfe"]))
        assert Inversion.from_bytes(blob).inverter == "sfe"


def test_an_edit_without_an_inversion_takes_the_deployments_default_and_says_which(runtime, shared, monkeypatch):
    """DEFAULT_INVERSION `auto` on a bundle with SFE: an edit naming no inversion runs SFE, and its resource
    says so (the resolved choice is stored on the row); `e4e`: e4e."""
    for default, made_by in (("auto", "sfe"), ("e4e", "e4e")):
        monkeypatch.setattr(runtime, "settings", runtime.settings.model_copy(update={"default_inversion": default}))
        edit_id = _edit(runtime, shared)
        assert _row(runtime, Edit, edit_id).spec.inversion is None
        assert run_edit(runtime, edit_id) == "succeeded", _row(runtime, Edit, edit_id).error_message
        edit = _row(runtime, Edit, edit_id)
        assert edit.options["inversion"] == made_by
        assert edit_input(edit)["inversion"] == made_by


def test_auto_resolves_on_what_every_live_worker_offers(runtime, shared, monkeypatch):
    """A mixed fleet (common/worker_offers.py): this worker has SFE, another live one does not, so `auto` is e4e
    here too (every worker resolves an edit naming none alike); a fleet that all has SFE gets SFE."""
    from common.worker_offers import FleetOffers

    monkeypatch.setattr(runtime, "settings", runtime.settings.model_copy(update={"default_inversion": "auto"}))
    for everywhere, made_by in (({"e4e"}, "e4e"), ({"e4e", "sfe"}, "sfe")):
        offers = FleetOffers(2, frozenset(everywhere), frozenset({"e4e", "sfe"}))
        monkeypatch.setattr(runtime, "fleet_offers", lambda offers=offers: offers)
        edit_id = _edit(runtime, shared)
        assert run_edit(runtime, edit_id) == "succeeded", _row(runtime, Edit, edit_id).error_message
        assert _row(runtime, Edit, edit_id).options["inversion"] == made_by


def test_sfe_on_a_bundle_without_its_model_fails_before_any_inversion(runtime, dev_bundle, tmp_path):
    """An explicit `"sfe"` where the bundle has no SFE file: `model_missing` saying how to add it, before any
    face is aligned or inverted; `auto` on that bundle would be e4e (the contract's test)."""
    from common.storage_layout import inversions_prefix
    from pipeline.weights.bundle import read_manifest

    bundle = tmp_path / "no-sfe"
    bundle.mkdir()
    manifest = read_manifest(dev_bundle)
    for item in Path(dev_bundle).iterdir():
        if item.is_file() and item.name != "manifest.json":
            (bundle / item.name).symlink_to(item.resolve())
    replace(manifest, models={role: e for role, e in manifest.models.items() if role != "sfe"}).write(bundle)
    without = Runtime(runtime.settings.model_copy(update={"model_dir": bundle, "cache_dir": tmp_path / "cache"}))
    image_id = _image(without, png_bytes(two_faces(height=300, gap=60)))
    edit_id = _edit(without, image_id, options={"inversion": "sfe"})
    assert run_edit(without, edit_id) == "failed"
    edit = _row(without, Edit, edit_id)
    assert edit.error_code == "model_missing" and "download --only sfe" in edit.error_message
    assert "invert_seconds" not in (edit.metrics or {}) and without.storage.list(inversions_prefix(image_id)) == []
