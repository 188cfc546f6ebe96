"""The OpenAPI document as generators read it: every operation has a short camelCase id, the one listed
in docs/API.md; one request content type per operation; the bearer key declared on `/v1`. And the
JSON claim of an upload, split out of `POST /v1/images`, works under both paths."""

from __future__ import annotations

import re

import httpx
import pytest

from api.main import create_app
from common.settings import REPO_ROOT, Settings
from tests.conftest import face_jpeg

_CAMEL = re.compile(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)*")
# A row of the table in docs/API.md: | `createEdit` | `POST /v1/edits` | ...
_ROW = re.compile(r"^\| `(\w+)` \| `([A-Z]+) (\S+)` \|", re.MULTILINE)


@pytest.fixture(scope="module")
def spec() -> dict:
    # No connection is made while the document is built: any database and broker address will do.
    app = create_app(Settings(database_url="sqlite://", redis_url="redis://127.0.0.1:1/0"))
    return app.openapi()


def _operations(spec: dict) -> dict[str, str]:
    """operation id → "METHOD path"; every id once."""
    found: dict[str, str] = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            op_id = operation["operationId"]
            assert op_id not in found, f"{op_id} names both {found[op_id]} and {method.upper()} {path}"
            found[op_id] = f"{method.upper()} {path}"
    return found


def test_every_operation_id_is_short_camel_case_and_listed_in_the_docs(spec):
    operations = _operations(spec)
    assert {op_id for op_id in operations if not _CAMEL.fullmatch(op_id)} == set()
    documented = {op_id: f"{method} {path}" for op_id, method, path in _ROW.findall(
        (REPO_ROOT / "docs" / "API.md").read_text())}  # fmt: skip
    # A renamed route function renames an operation (and every generated client's function): the list
    # in docs/API.md must change with it, on purpose.
    assert operations == documented
    assert {"createEdit", "getEdit", "listEdits", "cancelEdit", "createImage", "createImageFromUpload",
            "getWebhookSecret", "healthz"} <= set(operations)  # fmt: skip


def test_one_request_content_type_per_operation_and_the_key_declared(spec):
    """Two content types on one operation broke openapi-python-client's module (`NameError: Unset`)."""
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            assert len(content) <= 1, f"{method.upper()} {path} declares {sorted(content)}"
            assert (operation.get("security") == [{"bearerAuth": []}]) == path.startswith("/v1/"), path
    assert list(spec["paths"]["/v1/images"]["post"]["requestBody"]["content"]) == ["multipart/form-data"]
    assert list(spec["paths"]["/v1/images/from-upload"]["post"]["requestBody"]["content"]) == ["application/json"]


def _filled_slot(api) -> str:
    slot = api.post("/v1/uploads").json()
    sent = httpx.post(slot["url"], data=slot["fields"], files={"file": ("face.jpg", face_jpeg())})
    assert sent.status_code in (200, 204), sent.text
    return slot["upload_id"]


@pytest.mark.services
def test_claim_an_upload_at_its_own_path_and_at_the_old_one(api):
    claimed = api.post("/v1/images/from-upload", json={"upload_id": _filled_slot(api)})
    assert claimed.status_code == 201, claimed.text
    assert claimed.json()["width"] == 512 and claimed.json()["id"].startswith("img")
    assert api.get(f"/v1/images/{claimed.json()['id']}").status_code == 200
    upload_id = _filled_slot(api)
    old_form = api.post("/v1/images", json={"upload_id": upload_id})  # existing clients, out of the schema
    assert old_form.status_code == 201, old_form.text
    again = api.post("/v1/images/from-upload", json={"upload_id": upload_id})
    assert (again.status_code, again.json()["code"]) == (409, "upload_consumed")
    wrong = api.post("/v1/images/from-upload", json={"upload_id": 5})
    assert (wrong.status_code, wrong.json()["code"]) == (422, "validation_error")
    missing = api.post("/v1/images/from-upload", json={"upload_id": "upl_nope"})
    assert (missing.status_code, missing.json()["code"]) == (404, "upload_not_found")


def test_raw_bytes_are_declared_as_binary_bodies(spec):
    """Generators type these as files, not JSON: the upload slot's body and the two image downloads."""
    binary = {"type": "string", "format": "binary"}
    put = spec["paths"]["/v1/uploads/{upload_id}"]["put"]["requestBody"]
    assert put["required"] and put["content"] == {"application/octet-stream": {"schema": binary}}
    output = spec["paths"]["/v1/edits/{edit_id}/outputs/{index}"]["get"]["responses"]["200"]["content"]
    photo = spec["paths"]["/v1/images/{image_id}/file"]["get"]["responses"]["200"]["content"]
    assert output == photo == {"image/*": {"schema": binary}}  # one range: generators drop several types
