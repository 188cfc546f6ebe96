"""Break it on purpose: hostile keys, files, parameters, ids, cross-owner calls and webhook targets.
Every answer must be a 4xx with `{code, message}`, and a normal edit still goes through afterwards."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.conftest import face_jpeg
from tests.services import upload_files
from tests.services.api import GOOD_EDIT, running_service
from tests.services.attack_counts import count
from tests.services.settings import GENEROUS_LIMITS

pytestmark = [pytest.mark.trust, pytest.mark.services]

MISSING_IMAGE = "img_00000000000000000000000000"


@pytest.fixture(scope="module")
def service(settings):
    """The session's service (PostgreSQL, Redis, S3 over HTTP; the session `worker` consumes its
    queues), with limits out of the way so each hostile request meets the check it targets."""
    trust = settings.model_copy(update={**GENEROUS_LIMITS, "max_upload_bytes": 10 * 1024 * 1024})
    with running_service(trust, owner_suffix=f"-{uuid.uuid4().hex[:8]}", drop_queues=False) as svc:
        image_id = svc.post_image("alice").json()["id"]
        edit_id = svc.submit(image_id).json()["id"]
        svc.ids = {"image": image_id, "edit": edit_id}
        yield svc


def _check(response, case: str) -> None:
    count("cases tried")
    if response.status_code >= 500:
        count("5xx seen")
    assert 400 <= response.status_code < 500, f"{case}: {response.status_code} {response.text[:300]}"
    body = response.json()
    assert isinstance(body.get("code"), str) and body["code"], f"{case}: {body}"
    assert isinstance(body.get("message"), str), f"{case}: {body}"
    assert "Traceback" not in response.text and 'File "' not in response.text, case


def _edit_body(image: str, **overrides) -> dict:
    return {"image": image, **GOOD_EDIT} | overrides


def auth_cases(svc):
    revoked = svc.keys["revoked"]
    for name, headers in {
        "no header": {},
        "wrong key": {"Authorization": "Bearer fe_wrong"},
        "revoked key": {"Authorization": f"Bearer {revoked}"},
        "bare Bearer": {"Authorization": "Bearer"},
        "basic auth": {"Authorization": "Basic YWxpY2U6cHc="},
        "huge key": {"Authorization": "Bearer " + "A" * 8000},
        "key in lowercase scheme with spaces": {"Authorization": "bearer    "},
    }.items():
        for method, path in (("GET", "/v1/edits"), ("POST", "/v1/edits"), ("GET", "/v1/webhooks/secret"),
                             ("DELETE", "/v1/me/data"), ("GET", f"/v1/images/{svc.ids['image']}")):
            yield f"{name} {method} {path}", lambda m=method, p=path, h=headers: svc.client.request(
                m, p, headers=h, json=_edit_body(svc.ids["image"]) if m == "POST" else None)


def upload_cases(svc):
    for name, (data, filename) in upload_files.hostile_uploads().items():
        yield f"upload {name}", lambda d=data, f=filename: svc.client.post(
            "/v1/images", files={"file": (f, d, "image/jpeg")}, headers=svc.auth())
    big = b"\xff\xd8\xff" + b"\0" * (80 * 1024 * 1024)
    yield "80 MB body", lambda: svc.client.post("/v1/images", content=big, headers=svc.auth(
        **{"Content-Type": "multipart/form-data; boundary=x"}))
    yield "multipart without file", lambda: svc.client.post(
        "/v1/images", files={"other": ("a.txt", b"hi", "text/plain")}, headers=svc.auth())
    yield "file field as plain text", lambda: svc.client.post("/v1/images", data={"file": "hello"}, headers=svc.auth())
    yield "text/plain body", lambda: svc.client.post("/v1/images", content=b"hi", headers=svc.auth(
        **{"Content-Type": "text/plain"}))
    yield "broken multipart", lambda: svc.client.post("/v1/images", content=b"--x\r\nContent-Disp", headers=svc.auth(
        **{"Content-Type": "multipart/form-data; boundary=x"}))
    yield "unknown upload id", lambda: svc.client.post("/v1/images", json={"upload_id": "upl_nope"}, headers=svc.auth())
    yield "upload id wrong type", lambda: svc.client.post("/v1/images", json={"upload_id": ["x"]}, headers=svc.auth())
    yield "upload json malformed", lambda: svc.client.post("/v1/images", content=b"{", headers=svc.auth(
        **{"Content-Type": "application/json"}))


def parameter_cases(svc):
    image = svc.ids["image"]
    bad = {
        "alpha NaN": {"alphas": [float("nan")]},
        "alpha Infinity": {"alphas": [float("inf")]},
        "alpha 1e9": {"alphas": [1e9]},
        "alpha 1e999": {"alphas": [1e308 * 10]},
        "beta negative": {"beta": -0.1},
        "beta NaN": {"beta": float("nan")},
        "beta 1e9": {"beta": 1e9},
        "200 alphas": {"alphas": [1.0] * 200},
        "no alphas": {"alphas": []},
        "10 000-char target": {"target": "a" * 10_000},
        "10 000-char neutral": {"neutral": "b" * 10_000},
        "blank target": {"target": "   "},
        "NUL in target": {"target": "a face\u0000"},
        "NUL in image id": {"image": "img_\u0000"},
        "alphas a string": {"alphas": "1,2"},
        "alphas nested": {"alphas": [[1]]},
        "beta a string": {"beta": "0.1"},
        "beta bool": {"beta": True},
        "image a number": {"image": 12345},
        "image empty": {"image": ""},
        "image 10 000 chars": {"image": "i" * 10_000},
        "missing image": {"image": MISSING_IMAGE},
        "mode unknown": {"mode": "evil"},
        "output gif": {"output_format": "gif"},
        "unknown field": {"shell": "rm -rf /"},
        "filter unknown event": {"webhook_events_filter": ["evil"]},
        "filter not a list": {"webhook_events_filter": "start"},
        "webhook 5000 chars": {"webhook": "https://example.com/" + "a" * 5000},
        "webhook metadata": {"webhook": "http://169.254.169.254/latest/meta-data/iam/"},
        "webhook metadata v6 mapped": {"webhook": "http://[::ffff:169.254.169.254]/"},
        "webhook loopback": {"webhook": "http://127.0.0.1:6379/"},
        "webhook localhost": {"webhook": "http://localhost/"},
        "webhook decimal ip": {"webhook": "http://2130706433/"},
        "webhook file": {"webhook": "file:///etc/passwd"},
        "webhook credentials": {"webhook": "https://user:pw@example.com/"},
        "webhook private": {"webhook": "https://192.168.0.1/hook"},
    }
    for name, override in bad.items():
        body = json.dumps(_edit_body(image) | override, allow_nan=True)  # NaN/Infinity as JS literals
        yield f"edit {name}", lambda b=body: svc.client.post("/v1/edits", content=b, headers=svc.auth(
            **{"Content-Type": "application/json"}))
    for name, raw in {"malformed json": b"{", "json array": b"[]", "json null": b"null", "empty body": b"",
                      "json string": b'"x"', "utf-16 garbage": "{}".encode("utf-16"),
                      "deep nesting": b"[" * 5000 + b"]" * 5000}.items():
        yield f"edit {name}", lambda r=raw: svc.client.post("/v1/edits", content=r, headers=svc.auth(
            **{"Content-Type": "application/json"}))
    yield "edit as form", lambda: svc.client.post("/v1/edits", data={"image": image}, headers=svc.auth())
    for prefer in ("wait=abc", "wait=-1", "wait=0", "wait=1e9x"):
        yield f"prefer {prefer}", lambda p=prefer: svc.client.post(
            "/v1/edits", json=_edit_body(image), headers=svc.auth(Prefer=p))


def id_cases(svc):
    for path in ("/v1/edits/edt_missing", "/v1/images/img_missing", "/v1/edits/%00", "/v1/edits/" + "x" * 5000,
                 "/v1/edits/..%2f..%2fetc%2fpasswd", "/v1/images/%F0%9F%98%80", "/v1/edits/nope/outputs/0",
                 f"/v1/edits/{svc.ids['edit']}/outputs/-1", f"/v1/edits/{svc.ids['edit']}/outputs/99999999999999999999",
                 f"/v1/edits/{svc.ids['edit']}/outputs/abc", "/v1/edits?limit=0", "/v1/edits?limit=100000",
                 "/v1/edits?limit=abc", "/v1/edits?cursor=%%%", "/v1/edits?cursor=" + "A" * 300,
                 "/v1/edits?cursor=bm90LWEtY3Vyc29y", "/v1/images/img_missing/file", "/v1/edits/edt_missing/webhooks",
                 "/v1/nothing-here"):
        yield f"GET {path[:60]}", lambda p=path: svc.client.get(p, headers=svc.auth())
    yield "DELETE missing image", lambda: svc.client.delete("/v1/images/img_missing", headers=svc.auth())
    yield "cancel missing edit", lambda: svc.client.post("/v1/edits/edt_missing/cancel", headers=svc.auth())
    yield "PUT on edits", lambda: svc.client.put("/v1/edits", headers=svc.auth())


def cross_owner_cases(svc):
    image, edit = svc.ids["image"], svc.ids["edit"]
    calls = {
        "read image": ("GET", f"/v1/images/{image}", None),
        "read image file": ("GET", f"/v1/images/{image}/file", None),
        "delete image": ("DELETE", f"/v1/images/{image}", None),
        "edit image": ("POST", "/v1/edits", _edit_body(image)),
        "read edit": ("GET", f"/v1/edits/{edit}", None),
        "read output": ("GET", f"/v1/edits/{edit}/outputs/0", None),
        "read webhook log": ("GET", f"/v1/edits/{edit}/webhooks", None),
        "cancel edit": ("POST", f"/v1/edits/{edit}/cancel", None),
    }
    for name, (method, path, body) in calls.items():
        yield f"bob {name}", lambda m=method, p=path, b=body: svc.client.request(
            m, p, json=b, headers=svc.auth("bob"))


GROUPS = {"auth": auth_cases, "uploads": upload_cases, "parameters": parameter_cases, "ids": id_cases,
          "cross_owner": cross_owner_cases}


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_hostile_request_gets_a_4xx_with_a_code(service, group):
    failures = []
    for case, call in GROUPS[group](service):
        try:
            _check(call(), case)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


def test_cross_owner_answers_equal_missing_ids(service):
    for path in (f"/v1/images/{service.ids['image']}", f"/v1/edits/{service.ids['edit']}"):
        missing = path.rsplit("/", 1)[0] + "/" + path.rsplit("/", 1)[1][:4] + "0" * 26
        theirs = service.client.get(path, headers=service.auth("bob")).json()
        absent = service.client.get(missing, headers=service.auth("bob")).json()
        assert theirs["code"] == absent["code"]
        assert theirs["message"].replace(path.rsplit("/", 1)[1], "ID") == absent["message"].replace(
            missing.rsplit("/", 1)[1], "ID")


def test_alice_data_survived_and_a_normal_edit_still_succeeds(service, worker):
    assert service.client.get(f"/v1/images/{service.ids['image']}", headers=service.auth()).status_code == 200
    image_id = service.post_image(data=face_jpeg()).json()["id"]
    r = service.submit(image_id)
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 240
    while (edit := service.client.get(f"/v1/edits/{r.json()['id']}", headers=service.auth()).json())["status"] in (
            "starting", "processing") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert edit["status"] == "succeeded", (edit, worker.log()[-2000:])
    assert len(edit["output"]) == len(GOOD_EDIT["alphas"])
