"""Presigned uploads: straight to S3 (POST policy) or to the API's own slot with local storage."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import face_jpeg, make_api
from tests.services.api_process import ApiProcess

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


def test_the_bytes_of_an_upload_slot_are_charged_like_a_submit(settings, tmp_path):
    """PUT /v1/uploads/{id} stores up to MAX_UPLOAD_BYTES and was free of the per-key submit limit."""
    tight = settings.model_copy(update={"storage_backend": "local", "storage_dir": tmp_path,
                                        "submit_rate_burst": 3, "submit_rate_per_second": 0.001})
    api = make_api(tight)
    slot = api.post("/v1/uploads").json()  # submit 1
    answers = [api.put(slot["url"], content=face_jpeg()) for _ in range(3)]  # submits 2, 3, then refused
    assert [a.status_code for a in answers] == [204, 204, 429], [a.text for a in answers]
    assert answers[-1].json()["code"] == "rate_limited" and int(answers[-1].headers["retry-after"]) >= 1


def test_a_refused_upload_body_leaves_no_file(settings, tmp_path):
    api = make_api(settings.model_copy(update={"storage_backend": "local", "storage_dir": tmp_path,
                                               "max_upload_bytes": 4096}))
    slot = api.post("/v1/uploads").json()
    too_big = api.put(slot["url"], content=iter([b"\xff" * 3000, b"\xff" * 3000]))  # chunked: no Content-Length
    assert (too_big.status_code, too_big.json()["code"]) == (413, "payload_too_large")
    empty = api.put(slot["url"], content=b"")
    assert (empty.status_code, empty.json()["code"]) == (422, "invalid_image")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


PARALLEL_UPLOADS = 6
UPLOAD_MEMORY_BUDGET_MIB = 100  # docs/SECURITY.md, "Uploads"


def test_six_maximum_uploads_at_once_cost_the_api_under_100_mb(settings, tmp_path):
    """The slot's bytes stream to their file: held whole (twice: the buffer and its copy), six concurrent
    maximum uploads raised the API's memory by ~220 MB. Measured on a real uvicorn process: its peak resident
    memory (VmHWM) over its resident memory at rest."""
    local = settings.model_copy(update={"storage_backend": "local", "storage_dir": tmp_path / "storage"})
    api = make_api(local)  # the key, in the same database
    body = b"\xff" * local.max_upload_bytes
    with ApiProcess(local, tmp_path / "api.log") as process, httpx.Client(
            base_url=process.url, headers=api.headers, timeout=120) as client:  # fmt: skip
        slots = [client.post("/v1/uploads").json() for _ in range(PARALLEL_UPLOADS)]
        client.put(slots[0]["url"], content=b"warm-up")
        idle = process.rss_mib()
        with ThreadPoolExecutor(PARALLEL_UPLOADS) as pool:
            answers = list(pool.map(lambda slot: client.put(slot["url"], content=body).status_code, slots))
        peak = process.rss_mib("VmHWM")
    assert answers == [204] * PARALLEL_UPLOADS
    print(f"API memory: {idle:.0f} MiB at rest, {peak:.0f} MiB at the peak of {PARALLEL_UPLOADS} concurrent "
          f"{local.max_upload_bytes / 2**20:.0f} MiB uploads (+{peak - idle:.0f} MiB)")
    assert peak - idle < UPLOAD_MEMORY_BUDGET_MIB, f"+{peak - idle:.0f} MiB"
