"""Hostile values in an edit's `faces` and `changes` (#17): every one is a 4xx with a stable code at submit,
before anything is queued, never a 500 or a job that fails later: huge lists, duplicates, negative, huge,
boolean and fractional indices, NaN/infinite/zero/out-of-range/string weights, blank and overlong texts,
unknown fields, both forms at once, "all" on a crowd larger than MAX_FACES_PER_EDIT, and someone else's
image (indistinguishable from a missing one)."""

from __future__ import annotations

import pytest

from common.models import Image
from tests.services.api import GOOD_EDIT, running_service
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]

CHANGE = {"neutral": "a face", "target": "a smiling face", "weight": 1.0}


@pytest.fixture(scope="module")
def service(module_pg_url, tmp_path_factory):
    settings = local_settings(module_pg_url, tmp_path_factory.mktemp("faces") / "storage", max_faces_per_edit=3,
                              max_changes_per_edit=2)
    with running_service(settings) as svc:
        yield svc


def _with_faces(service, count: int, who: str = "alice") -> str:
    """An image of `who` whose detection found `count` faces (what the worker's `detect_faces` stores)."""
    image_id = service.post_image(who).json()["id"]
    with service.factory() as session:
        image = session.get(Image, image_id)
        image.faces = [{"index": i, "box": [i, 0, i + 1, 1], "score": 0.9} for i in range(count)]
        image.faces_status = "done"
        session.commit()
    return image_id


def _submit(service, image_id: str, **fields):
    body = {"image": image_id, **GOOD_EDIT, **fields}
    return service.client.post("/v1/edits", json={k: v for k, v in body.items() if v is not None},
                               headers=service.auth())


NO_TEXTS = {"neutral": None, "target": None}


@pytest.mark.parametrize(
    "fields",
    [
        {"faces": list(range(1000))},  # a huge list stops at validation
        {"faces": [0, 0]},
        {"faces": [-1]},
        {"faces": [10**30]},
        {"faces": [True]},
        {"faces": [1.0]},
        {"faces": "0"},
        {"faces": {"index": 0}},
        {"faces": [[0]]},
        {"faces": [0, 1, 2, 3]},  # MAX_FACES_PER_EDIT = 3 here
        {**NO_TEXTS, "changes": [CHANGE] * 1000},
        {**NO_TEXTS, "changes": [CHANGE, CHANGE]},  # the same change twice
        {**NO_TEXTS, "changes": [{**CHANGE, "target": f"t{i}"} for i in range(3)]},  # MAX_CHANGES_PER_EDIT = 2
        {**NO_TEXTS, "changes": [{**CHANGE, "weight": 0}]},
        {**NO_TEXTS, "changes": [{**CHANGE, "weight": -2.01}]},
        {**NO_TEXTS, "changes": [{**CHANGE, "weight": "1"}]},
        {**NO_TEXTS, "changes": [{**CHANGE, "weight": None}]},
        {**NO_TEXTS, "changes": [{**CHANGE, "neutral": ""}]},
        {**NO_TEXTS, "changes": [{**CHANGE, "target": "\t \n"}]},
        {**NO_TEXTS, "changes": [{**CHANGE, "target": "x" * 201}]},
        {**NO_TEXTS, "changes": [{**CHANGE, "target": {"$ne": ""}}]},
        {**NO_TEXTS, "changes": [{**CHANGE, "extra": 1}]},
        {**NO_TEXTS, "changes": [CHANGE, {**CHANGE, "target": "b"}], "mode": "optimize"},
        {**NO_TEXTS, "changes": {"0": CHANGE}},
        {**NO_TEXTS, "changes": None, "faces": "all"},  # no change at all
        {"changes": [CHANGE]},  # both forms
    ],
    ids=lambda fields: str(fields)[:60],
)
def test_hostile_faces_and_changes_are_422_validation_error(service, fields):
    image_id = _with_faces(service, 2)  # its upload queued a `detect_faces` message
    before = service.queued()
    response = _submit(service, image_id, **fields)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert service.queued() == before  # nothing reached the queue


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_weights_are_422(service, literal):
    image_id = _with_faces(service, 1)
    change = '{"neutral": "a face", "target": "a smiling face", "weight": ' + literal + "}"
    body = '{"image": "' + image_id + '", "alphas": [1], "changes": [' + change + "]}"
    response = service.client.post("/v1/edits", content=body,
                                   headers=service.auth(**{"content-type": "application/json"}))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize(("faces", "count"), [([2], 2), ([0, 999], 2), ("all", 4), ([0], 0)])
def test_faces_the_photo_does_not_have_are_422_with_a_stable_code(service, faces, count):
    response = _submit(service, _with_faces(service, count), faces=faces)
    if count == 0:  # nobody in the photo: the job says `no_face`, as before #17
        assert response.status_code == 201
        return
    assert response.status_code == 422 and response.json()["code"] == "invalid_parameter", response.text
    message = response.json()["message"]
    assert ("0..1" in message) if faces != "all" else ("at most 3" in message)


def test_someone_elses_image_is_a_404_like_a_missing_one(service):
    bobs = _with_faces(service, 2, who="bob")
    mine = _submit(service, bobs, faces=[1])
    assert mine.status_code == 404 and mine.json()["code"] == "image_not_found"
    missing = _submit(service, "img_" + "0" * 26, faces=[1])
    assert missing.json() == {**mine.json(), "message": missing.json()["message"]}
    assert service.client.get(f"/v1/images/{bobs}", headers=service.auth()).status_code == 404
