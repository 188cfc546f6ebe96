"""`/v1/images`: formats, EXIF orientation, limits, ownership, deletion (PostgreSQL + S3 over HTTP)."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from tests.api.test_edits import NOT_ASCII_INTEGERS
from tests.conftest import face_jpeg, make_api

pytestmark = pytest.mark.services


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt,name", [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("HEIF", "heif")])
def test_accepted_formats(api, fmt, name):
    data = _encode(Image.new("RGB", (320, 200), (120, 90, 60)), fmt)
    image = api.upload(data, name=f"photo.{name}")
    assert (image["format"], image["width"], image["height"], image["bytes"]) == (name, 320, 200, len(data))


def test_exif_orientation_is_applied_to_the_reported_size(api):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: a landscape file shows as portrait
    image = api.upload(_encode(Image.new("RGB", (320, 200)), "JPEG", exif=exif))
    assert (image["width"], image["height"]) == (200, 320)


def test_original_bytes_are_kept_and_served(api):
    data = face_jpeg()
    image = api.upload(data)
    assert api.get(f"/v1/images/{image['id']}").json()["id"] == image["id"]
    assert httpx.get(image["urls"]["file"]).content == data  # presigned S3 URL, no API key needed
    assert api.get(f"/v1/images/{image['id']}/file").content == data


@pytest.mark.parametrize(
    "data,code,status",
    [
        (_encode(Image.new("RGB", (80, 80)), "GIF"), "unsupported_format", 415),
        (b"%PDF-1.4 definitely not a photo", "unsupported_format", 415),
        (_encode(Image.new("RGB", (400, 400)), "JPEG")[:600], "invalid_image", 422),
        (_encode(Image.new("RGB", (40, 400)), "PNG"), "image_too_small", 422),
        (_encode(Image.new("1", (8000, 8000)), "PNG"), "image_too_large", 413),
        (b"", "invalid_image", 422),
    ],
)
def test_bad_photos_get_a_typed_4xx(api, data, code, status):
    response = api.post("/v1/images", files={"file": ("x", data, "application/octet-stream")})
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert set(response.json()) == {"code", "message"}


def test_request_shape_errors(api):
    missing = api.post("/v1/images", files={"other": ("x", b"123", "image/jpeg")})
    assert (missing.status_code, missing.json()["code"]) == (422, "validation_error")
    wrong_type = api.post("/v1/images", content=b"raw", headers={"content-type": "image/jpeg"})
    assert (wrong_type.status_code, wrong_type.json()["code"]) == (415, "unsupported_media_type")


def test_body_over_the_limit_is_refused_before_reading(settings):
    small = make_api(settings.model_copy(update={"max_upload_bytes": 4096}))
    response = small.post("/v1/images", files={"file": ("big.jpg", b"\xff" * 200_000, "image/jpeg")})
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")


def test_someone_elses_image_is_indistinguishable_from_a_missing_one(api, settings):
    image = api.upload(face_jpeg())
    stranger = make_api(settings, name="stranger")
    theirs = stranger.get(f"/v1/images/{image['id']}")
    missing = stranger.get("/v1/images/img_doesnotexist")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["code"] == missing.json()["code"] == "image_not_found"
    assert stranger.delete(f"/v1/images/{image['id']}").status_code == 404
    assert stranger.post("/v1/edits", json={
        "image": image["id"], "neutral": "a face", "target": "a smile", "alphas": [1], "beta": 0.1,
    }).status_code == 404  # fmt: skip


def test_delete_removes_the_photo_and_its_edits(api):
    image = api.upload(face_jpeg())
    edit = api.post("/v1/edits", json={
        "image": image["id"], "neutral": "a face", "target": "a smile", "alphas": [1], "beta": 0.1,
    }).json()  # fmt: skip
    assert api.delete(f"/v1/images/{image['id']}").status_code == 204
    assert api.get(f"/v1/images/{image['id']}").status_code == 404
    assert api.get(f"/v1/edits/{edit['id']}").status_code == 404
    storage = api.client.app.state.storage
    assert storage.list(f"originals/{image['id']}") == []


def test_faces_are_pending_at_once_without_a_worker(queued_settings):
    api = make_api(queued_settings)
    response = api.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")})
    assert response.status_code == 201
    assert (response.json()["faces"], response.json()["faces_status"]) == (None, "pending")
    assert "preference-applied" not in response.headers


def test_faces_are_listed_and_an_edit_changes_them_all(api, worker):
    from tests.pipeline.images import png_bytes, two_faces

    photo = png_bytes(two_faces(height=300, gap=60))
    response = api.post("/v1/images", files={"file": ("two.png", photo, "image/png")},
                        headers={"Prefer": "wait=60"})
    assert response.status_code == 201 and response.headers["preference-applied"] == "wait=5"  # capped
    image = response.json()
    deadline = time.monotonic() + 120
    while image["faces_status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.5)
        image = api.get(f"/v1/images/{image['id']}").json()
    assert image["faces_status"] == "done", worker.log()[-3000:]
    assert [face["index"] for face in image["faces"]] == [0, 1]
    assert all(len(face["box"]) == 4 and 0 < face["score"] <= 1 for face in image["faces"])

    body = {"image": image["id"], "faces": "all", "alphas": [1.5], "output_format": "png",
            "changes": [{"neutral": "a face", "target": "a smiling face", "weight": 1.0}]}
    submitted = api.post("/v1/edits", json=body)
    assert submitted.status_code == 201, submitted.text
    edit = api.wait(submitted.json()["id"])
    assert edit["status"] == "succeeded", (edit["error"], worker.log()[-3000:])
    assert [face["index"] for face in edit["metrics"]["faces"]] == [0, 1]
    assert len(edit["output"]) == 1 and len(edit["likeness"]) == 1 and edit["metrics"]["first_output_seconds"] > 0
    result = Image.open(io.BytesIO(httpx.get(edit["output"][0]).content))
    assert result.size == (image["width"], image["height"])


def _left_behind(api, settings) -> tuple:
    """Everything a request could leave: stored objects, rows, queued tasks (no worker consumes these)."""
    from redis import Redis
    from sqlalchemy import func, select

    from common.models import Edit, Image, Upload

    with api.client.app.state.session_factory() as session:
        rows = {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                for model in (Image, Upload, Edit)}  # fmt: skip
    with Redis.from_url(settings.redis_url) as redis:
        queued = redis.llen(settings.edits_queue)
    return sorted(api.client.app.state.storage.list("")), rows, queued


@pytest.mark.parametrize("prefer", [b"wait=abc", b"wait=0", b"wait=-1", *NOT_ASCII_INTEGERS])
def test_a_refused_upload_leaves_nothing_behind(queued_settings, prefer):
    """A 400 used to keep the photo, its row and a detection task for 24 h under an id the client never
    learnt, and to use up the upload slot of the JSON form (a retry got 409 upload_consumed)."""
    api = make_api(queued_settings)
    slot = api.post("/v1/uploads").json()
    assert httpx.post(slot["url"], data=slot["fields"], files={"file": ("f.jpg", face_jpeg())}).status_code < 300
    before = _left_behind(api, queued_settings)
    for form in ({"files": {"file": ("face.jpg", face_jpeg(), "image/jpeg")}}, {"json": {"upload_id": slot["upload_id"]}}):
        refused = api.exact("POST", "/v1/images", headers={"Prefer": prefer}, **form)
        assert (refused.status_code, refused.json()["code"]) == (400, "invalid_prefer"), refused.text
        assert _left_behind(api, queued_settings) == before
    claimed = api.post("/v1/images", json={"upload_id": slot["upload_id"]})  # the slot is still there
    assert claimed.status_code == 201, claimed.text
