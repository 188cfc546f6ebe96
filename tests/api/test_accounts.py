"""Keys, isolation, idempotency, limits, webhook endpoints and erasure through the real HTTP API."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from sqlalchemy import func, select

from common.db import upgrade
from common.models import Edit, Image
from common.storage import LocalStorage
from common.topology import PROCESS_EDIT
from tests.services import upload_files
from tests.services.api import running_service
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]


@pytest.fixture
def service(fresh_pg_url, tmp_path):
    with running_service(local_settings(fresh_pg_url, tmp_path / "storage")) as svc:
        yield svc


def _count(service, model, *where):
    with service.factory() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def _queued_edit_jobs(service) -> list[str]:
    """Ids of the edit jobs waiting in the queue (uploads queue face detection there too)."""
    client = redis.Redis.from_url(service.settings.redis_url)
    try:
        messages = [json.loads(m) for m in client.lrange(service.settings.edits_queue, 0, -1)]
    finally:
        client.close()
    return [m["headers"]["id"] for m in messages if m["headers"]["task"] == PROCESS_EDIT.name]


def test_missing_wrong_and_revoked_keys_get_401(service):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YTpi"},
                    {"Authorization": f"Bearer {service.keys['revoked']}"}):
        r = service.client.get("/v1/edits", headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"


def test_someone_elses_ids_look_exactly_like_missing_ones(service):
    image_id = service.post_image("alice").json()["id"]
    edit_id = service.submit(image_id).json()["id"]
    for path, missing in ((f"/v1/images/{image_id}", "/v1/images/img_00000000000000000000000000"),
                          (f"/v1/edits/{edit_id}", "/v1/edits/edt_00000000000000000000000000"),
                          (f"/v1/edits/{edit_id}/webhooks", "/v1/edits/edt_00000000000000000000000000/webhooks")):
        theirs = service.client.get(path, headers=service.auth("bob"))
        absent = service.client.get(missing, headers=service.auth("bob"))
        assert theirs.status_code == absent.status_code == 404
        assert theirs.json()["code"] == absent.json()["code"]
    assert service.client.delete(f"/v1/images/{image_id}", headers=service.auth("bob")).status_code == 404
    assert service.client.post(f"/v1/edits/{edit_id}/cancel", headers=service.auth("bob")).status_code == 404
    assert service.submit(image_id, who="bob").status_code == 404  # editing someone else's photo
    assert service.client.get(f"/v1/images/{image_id}", headers=service.auth("alice")).status_code == 200


def test_idempotent_upload_and_edit(service):
    photo = upload_files.photo("JPEG", (128, 128))
    first = service.post_image(data=photo, **{"Idempotency-Key": "up-1"})
    again = service.post_image(data=photo, **{"Idempotency-Key": "up-1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert _count(service, Image) == 1
    other = service.post_image(data=upload_files.photo("PNG", (128, 128)), **{"Idempotency-Key": "up-1"})
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")

    image_id = first.json()["id"]
    body = {"image": image_id, "neutral": "a face", "target": "a face with glasses", "alphas": [1], "beta": 0.1}
    headers = service.auth(**{"Idempotency-Key": "edit-1"})
    a = service.client.post("/v1/edits", json=body, headers=headers)
    b = service.client.post("/v1/edits", json=body, headers=headers)
    assert a.status_code == b.status_code == 201 and a.json()["id"] == b.json()["id"]
    assert _count(service, Edit) == 1 and _queued_edit_jobs(service) == [a.json()["id"]]  # no second job
    changed = service.client.post("/v1/edits", json={**body, "beta": 0.2}, headers=headers)
    assert (changed.status_code, changed.json()["code"]) == (422, "idempotency_key_reused")
    # Keys are per caller: bob's identical key is his own.
    assert service.post_image("bob", data=photo, **{"Idempotency-Key": "up-1"}).json()["id"] != image_id


def test_in_flight_key_gets_409_and_failed_request_releases_key(service):
    image_id = service.post_image().json()["id"]
    body = {"image": image_id, "neutral": "a face", "target": "a face with a hat", "alphas": [1], "beta": 0.1}
    headers = service.auth(**{"Idempotency-Key": "slow", "Prefer": "wait=3"})
    with ThreadPoolExecutor(1) as pool:  # no worker runs: the first request holds for its 3 s
        first = pool.submit(service.client.post, "/v1/edits", json=body, headers=headers)
        time.sleep(1.0)
        second = service.client.post("/v1/edits", json=body, headers=headers)
        assert (second.status_code, second.json().get("code")) == (409, "idempotency_key_in_flight"), second.text
        assert first.result().status_code == 201
    bad = service.post_image(data=b"not a photo", **{"Idempotency-Key": "retry-me"})
    assert bad.status_code == 415
    good = service.post_image(**{"Idempotency-Key": "retry-me"})
    assert good.status_code == 201  # a refused request did not burn the key
    for bad_key in ('""', "x" * 300, b"caf\xe9", b"a\x01b"):
        r = service.post_image(**{"Idempotency-Key": bad_key})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_idempotency_key")


def test_webhook_secret_per_account(service):
    a1 = service.client.get("/v1/webhooks/secret", headers=service.auth("alice")).json()["key"]
    a2 = service.client.get("/v1/webhooks/secret", headers=service.auth("alice")).json()["key"]
    b = service.client.get("/v1/webhooks/secret", headers=service.auth("bob")).json()["key"]
    assert a1 == a2 != b and a1.startswith("whsec_")


@pytest.mark.parametrize(("url", "code"), [
    ("http://169.254.169.254/latest/meta-data/", "url_forbidden_address"),
    ("http://127.0.0.1:8000/hook", "url_forbidden_address"),
    ("http://[::ffff:7f00:1]/hook", "url_forbidden_address"),
    ("http://10.1.2.3/hook", "url_forbidden_address"),
    ("file:///etc/passwd", "validation_error"),
    ("gopher://localhost:6379/_FLUSHALL", "validation_error"),
])
def test_webhook_urls_refused_at_submission(service, url, code):
    image_id = service.post_image().json()["id"]
    r = service.submit(image_id, webhook=url)
    assert (r.status_code, r.json()["code"]) == (422, code)


def test_delete_my_data_removes_everything_of_mine_only(service):
    mine = service.post_image("alice").json()["id"]
    service.submit(mine)
    theirs = service.post_image("bob").json()["id"]
    assert service.client.delete("/v1/me/data", headers=service.auth("alice")).status_code == 204
    assert service.client.get(f"/v1/images/{mine}", headers=service.auth("alice")).status_code == 404
    assert _count(service, Image, Image.owner == "alice") == _count(service, Edit, Edit.owner == "alice") == 0
    storage = LocalStorage(service.settings.storage_dir)
    assert storage.list("originals") == [f"originals/{theirs}"]
    assert service.client.get(f"/v1/images/{theirs}", headers=service.auth("bob")).status_code == 200


def test_rate_limit_and_queue_caps(fresh_pg_url, tmp_path):
    settings = local_settings(fresh_pg_url, tmp_path / "s", rate_limit_per_second=0.01, rate_limit_burst=5,
                              max_queued_per_owner=2)
    with running_service(settings) as service:
        image_id = service.post_image().json()["id"]
        assert [service.submit(image_id).status_code for _ in range(3)] == [201, 201, 429]
        full = service.submit(image_id)
        assert full.status_code == 429 and full.json()["code"] in ("queue_full", "rate_limited")
        limited = service.client.get("/v1/edits", headers=service.auth())
        assert (limited.status_code, limited.json()["code"]) == (429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        assert service.client.get("/v1/edits", headers=service.auth("bob")).status_code == 200  # per key


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_concurrent_submits_cannot_overshoot_the_queue_cap(database, request, tmp_path):
    """Ten submits at once against a cap of three: each counts the queue and inserts under one lock, so exactly
    three are accepted (without it, all ten could count zero and all ten be queued)."""
    cap, n = 3, 10
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'edits.db'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("fresh_pg_url")
    settings = local_settings(url, tmp_path / "s", max_queued_per_owner=cap)
    with running_service(settings) as service:
        image_id = service.post_image().json()["id"]
        barrier = threading.Barrier(n)

        def submit(_):
            barrier.wait()
            return service.submit(image_id)

        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(submit, range(n)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] * cap + [429] * (n - cap), [r.text for r in responses if r.status_code != 201]
        assert {r.json()["code"] for r in responses if r.status_code == 429} == {"queue_full"}
        assert _count(service, Edit, Edit.owner == "alice") == cap
