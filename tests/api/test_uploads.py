"""Presigned uploads: straight to S3 (POST policy) or to the API's own slot with local storage."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import face_jpeg, make_api

pytestmark = pytest.mark.services


def test_s3_presigned_post_then_claim(api):
    slot = api.post("/v1/uploads").json()
    assert slot["method"] == "POST" and slot["max_bytes"] > 0 and slot["fields"]
    early = api.post("/v1/images", json={"upload_id": slot["upload_id"]})
    assert (early.status_code, early.json()["code"]) == (409, "upload_missing")
    data = face_jpeg()
    sent = httpx.post(slot["url"], data=slot["fields"], files={"file": ("face.jpg", data)})
    assert sent.status_code in (200, 204), sent.text
    image = api.post("/v1/images", json={"upload_id": slot["upload_id"]})
    assert image.status_code == 201, image.text
    assert (image.json()["width"], image.json()["bytes"]) == (512, len(data))
    again = api.post("/v1/images", json={"upload_id": slot["upload_id"]})
    assert (again.status_code, again.json()["code"]) == (409, "upload_consumed")


def test_unknown_or_foreign_upload_is_404(api, settings):
    slot = api.post("/v1/uploads").json()
    stranger = make_api(settings, name="stranger")
    response = stranger.post("/v1/images", json={"upload_id": slot["upload_id"]})
    assert (response.status_code, response.json()["code"]) == (404, "upload_not_found")
    assert api.post("/v1/images", json={"upload_id": "upl_nope"}).status_code == 404
    assert api.post("/v1/images", json={"upload_id": 5}).json()["code"] == "validation_error"


def test_local_storage_upload_slot(settings, tmp_path):
    api = make_api(settings.model_copy(update={"storage_backend": "local", "storage_dir": tmp_path}))
    slot = api.post("/v1/uploads").json()
    assert slot["method"] == "PUT" and slot["url"].endswith(f"/v1/uploads/{slot['upload_id']}")
    assert api.put(slot["url"], content=face_jpeg()).status_code == 204
    image = api.post("/v1/images", json={"upload_id": slot["upload_id"]})
    assert image.status_code == 201, image.text
    assert image.json()["urls"]["file"].endswith(f"/v1/images/{image.json()['id']}/file")
    assert api.put(slot["url"], content=b"again").json()["code"] == "upload_consumed"
    assert list((tmp_path / "uploads").glob("*")) == []  # the slot's bytes moved to originals/
