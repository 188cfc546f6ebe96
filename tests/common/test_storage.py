"""Storage backends: the same contract on local files and on S3 over HTTP (moto server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from common.settings import Settings
from common.storage import LocalStorage, ObjectNotFound, S3Storage, StorageUnavailable


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    settings = Settings(
        storage_backend="s3", s3_endpoint_url=endpoint, s3_bucket=f"t-{tmp_path.name[-20:].lower().replace('_', '-')}",
        s3_access_key_id="testing", s3_secret_access_key="testing", s3_create_bucket=True,
    )  # fmt: skip
    return S3Storage(settings)


@pytest.mark.services
def test_put_get_size_list_delete(storage):
    storage.put("results/e1/0.jpg", b"zero")
    storage.put("results/e1/1.jpg", b"one!")
    storage.put("results/e10/0.jpg", b"other edit")
    assert storage.get("results/e1/1.jpg") == b"one!"
    assert storage.size("results/e1/0.jpg") == 4 and storage.size("results/e1/9.jpg") is None
    assert storage.list("results/e1/") == ["results/e1/0.jpg", "results/e1/1.jpg"]
    assert storage.delete_prefix("results/e1/") == 2
    assert storage.list("results/") == ["results/e10/0.jpg"]
    with pytest.raises(ObjectNotFound):
        storage.get("results/e1/0.jpg")
    storage.check()


@pytest.mark.services
def test_overwrite_keeps_one_object(storage):
    storage.put("inversions/i/v.npz", b"a")
    storage.put("inversions/i/v.npz", b"b")
    assert storage.list("inversions/i/") == ["inversions/i/v.npz"] and storage.get("inversions/i/v.npz") == b"b"


@pytest.mark.services
def test_list_objects_gives_keys_sizes_and_write_times(storage):
    """What the orphan sweep reads: every object under a prefix with its size and last write (UTC)."""
    before = datetime.now(UTC) - timedelta(seconds=5)  # S3 stamps whole seconds, the server's clock
    storage.put("originals/img_a", b"photo")
    storage.put("inversions/img_a/enc.npz", b"codes!")
    storage.put("originals/img_b", b"x")
    listed = {item.key: item for item in storage.list_objects("originals/")}
    assert sorted(listed) == ["originals/img_a", "originals/img_b"]
    assert listed["originals/img_a"].size == 5
    after = datetime.now(UTC) + timedelta(seconds=5)
    assert all(before <= item.modified <= after and item.modified.tzinfo is not None for item in listed.values())
    assert [item.key for item in storage.list_objects("inversions/img_a/")] == ["inversions/img_a/enc.npz"]
    assert list(storage.list_objects("results/")) == []
    assert storage.delete(["originals/img_a", "originals/missing"]) == 2
    assert storage.list("originals/") == ["originals/img_b"]


def test_local_storage_that_cannot_be_written_says_unavailable(tmp_path):
    """An unmounted or read-only folder is an infrastructure error (the worker retries), not a missing key."""
    root = tmp_path / "store"
    root.write_bytes(b"")  # where the folder should be: a file (unwritable even for root)
    storage = LocalStorage(root)
    with pytest.raises(StorageUnavailable):
        storage.put("originals/x", b"x")
    with pytest.raises(StorageUnavailable):
        storage.get("originals/x")


def test_local_rejects_keys_outside_its_root(tmp_path):
    with pytest.raises(ValueError):
        LocalStorage(tmp_path).put("../escape", b"x")


@pytest.mark.services
def test_s3_presigned_urls_work_over_http(s3_endpoint, tmp_path):
    storage = S3Storage(Settings(
        storage_backend="s3", s3_endpoint_url=s3_endpoint, s3_bucket="presign-test",
        s3_access_key_id="testing", s3_secret_access_key="testing", s3_create_bucket=True,
    ))  # fmt: skip
    upload = storage.presigned_upload("uploads/u1", max_bytes=1000, expires=timedelta(minutes=5))
    assert upload.method == "POST"
    response = httpx.post(upload.url, data=upload.fields, files={"file": ("x", b"photo bytes")})
    assert response.status_code in (200, 204), response.text
    url = storage.presigned_get("uploads/u1", timedelta(minutes=5), "image/jpeg")
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == b"photo bytes"


@pytest.mark.services
def test_s3_presigned_urls_use_the_public_endpoint(s3_endpoint, tmp_path):
    """Services reach S3 by an internal name; the links handed to clients name the public one."""
    swap = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}
    host = next((h for h in swap if f"//{h}" in s3_endpoint), None)
    if host is None:
        pytest.skip(f"needs a loopback S3 endpoint to name it two ways, got {s3_endpoint}")
    public = s3_endpoint.replace(f"//{host}", f"//{swap[host]}")
    storage = S3Storage(Settings(
        storage_backend="s3", s3_endpoint_url=s3_endpoint, s3_public_endpoint_url=public,
        s3_bucket="presign-public-test", s3_access_key_id="testing", s3_secret_access_key="testing",
        s3_create_bucket=True,
    ))  # fmt: skip
    upload = storage.presigned_upload("uploads/u2", max_bytes=1000, expires=timedelta(minutes=5))
    assert upload.url.startswith(public)
    assert httpx.post(upload.url, data=upload.fields, files={"file": ("x", b"public")}).status_code in (200, 204)
    url = storage.presigned_get("uploads/u2", timedelta(minutes=5))
    assert url.startswith(public)
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == b"public"
    storage.put("direct", b"x")  # the service itself still talks to the internal endpoint
    assert storage.get("direct") == b"x"
