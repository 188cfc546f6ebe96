"""`/v1/edits` without a worker: validation, queueing, Prefer: wait, cancel, pagination, ownership,
and the JSON error shape everywhere."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event

from common.edit_contract import MAX_TEXT_CHARS
from tests.conftest import face_jpeg, make_api

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def queued(queued_settings):
    """An API whose queue no worker consumes, and one uploaded photo."""
    api = make_api(queued_settings)
    return api, api.upload(face_jpeg())["id"]


def _body(image_id: str, **changes) -> dict:
    return {"image": image_id, "neutral": "a face", "target": "a smiling face", "alphas": [-2, 0, 2],
            "beta": 0.15, **changes}  # fmt: skip


def test_submit_answers_starting_with_the_resource(queued):
    api, image_id = queued
    response = api.post("/v1/edits", json=_body(image_id, webhook="https://example.com/hook",
                                                webhook_events_filter=["completed"]))  # fmt: skip
    assert response.status_code == 201, response.text
    edit = response.json()
    assert edit["status"] == "starting" and edit["output"] is None and edit["error"] is None
    assert edit["input"] == {"image": image_id, "neutral": "a face", "target": "a smiling face",
                             "changes": [{"neutral": "a face", "target": "a smiling face", "weight": 1.0}],
                             "faces": "largest", "alphas": [-2.0, 0.0, 2.0], "beta": 0.15, "mode": "global",
                             "steps": None, "inversion": None, "output_format": "jpeg"}  # the worker resolves it
    assert edit["queue_position"] >= 0 and edit["webhook_events_filter"] == ["completed"]
    assert "trace_id" in edit and edit["trace_id"] is None  # tracing off (the default): no trace, no id
    assert response.headers["location"] == edit["urls"]["get"]
    assert api.get(edit["urls"]["get"]).json()["id"] == edit["id"]


@pytest.mark.parametrize(
    "changes",
    [
        {"alphas": []},
        {"alphas": list(range(9))},  # more than MAX_ALPHAS
        {"alphas": [1e6]},
        {"alphas": [10.5]},  # the pipeline's bound is 10
        {"beta": 0},
        {"alphas": ["strong"]},
        {"beta": -0.1},
        {"beta": 2},
        {"neutral": "   "},
        {"target": "x" * (MAX_TEXT_CHARS + 1)},
        {"steps": 10},  # optimize mode only
        {"mode": "optimize", "steps": 10_000},
        {"inversion": "psp"},
        {"mode": "magic"},
        {"output_format": "gif"},
        {"webhook": "ftp://example.com"},
        {"webhook_events_filter": ["everything"]},
        {"surprise": True},
        {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},  # the server's alone (common/tracing.py)
        {"trace_id": None},
        {"image": ""},
    ],
)
def test_invalid_parameters_are_422(queued, changes):
    api, image_id = queued
    response = api.post("/v1/edits", json=_body(image_id, **changes))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error" and response.json()["message"]


def _stored_and_queued(api, settings) -> tuple[int, int]:
    """Edit rows and queued edit jobs, to show that a refused request left neither."""
    from redis import Redis
    from sqlalchemy import func, select

    from common.models import Edit

    with api.client.app.state.session_factory() as session:
        rows = session.scalar(select(func.count()).select_from(Edit))
    with Redis.from_url(settings.redis_url) as broker:
        return rows, broker.llen(settings.edits_queue)


@pytest.mark.parametrize(
    "fields",
    [
        {"target": "x" * 250},  # was a 500: the one-change form allowed 300 characters, its change 200
        {"neutral": "y" * (MAX_TEXT_CHARS + 1)},
        {"neutral": None, "target": None,  # was accepted, then failed after the inversion
         "changes": [{"neutral": "a face", "target": "a smiling face"}, {"neutral": "a face", "target": "x" * 250}]},
    ],
    ids=["one-change-250", "one-change-neutral", "changes-250"],
)
def test_a_text_over_the_contracts_limit_is_refused_at_submit_leaving_nothing(queued, queued_settings, fields):
    """#21, #23: one text limit (the edit contract's) for both forms, checked at submit: 422 validation_error
    naming the limit, no row, nothing queued."""
    api, image_id = queued
    before = _stored_and_queued(api, queued_settings)
    body = {k: v for k, v in _body(image_id, **fields).items() if v is not None}
    response = api.post("/v1/edits", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert f"at most {MAX_TEXT_CHARS} characters" in response.json()["message"]
    assert _stored_and_queued(api, queued_settings) == before


def test_a_text_at_the_contracts_limit_is_accepted_in_either_form(queued):
    api, image_id = queued
    text = "x" * MAX_TEXT_CHARS
    one = api.post("/v1/edits", json=_body(image_id, target=text))
    assert one.status_code == 201, one.text
    assert one.json()["input"]["changes"] == [{"neutral": "a face", "target": text, "weight": 1.0}]
    several = api.post("/v1/edits", json=_body(image_id, neutral=None, target=None, changes=[
        {"neutral": "a face", "target": text, "weight": 0.5}, {"neutral": text, "target": "a face"}]))
    assert several.status_code == 201, several.text
    assert several.json()["input"]["neutral"] is None  # two changes: the list form only


def test_the_app_config_publishes_the_edit_limits(queued_settings):
    """What the web app reads its limits from: the contract's, with this server's settings."""
    api = make_api(queued_settings.model_copy(update={"max_changes_per_edit": 2, "max_alphas": 5,
                                                      "default_inversion": "sfe"}))
    limits = api.client.get("/app-config.json").json()["limits"]
    assert (limits["max_changes"], limits["max_alphas"], limits["max_text_chars"]) == (2, 5, MAX_TEXT_CHARS)
    assert limits["inversions"] == ["e4e", "sfe"] and limits["default_inversion"] == "sfe"
    assert limits["weight"] == [-2.0, 2.0] and limits["modes"] == ["global", "optimize"]


def test_beta_defaults_to_styleclips_value(queued):
    api, image_id = queued
    body = _body(image_id)
    del body["beta"]
    response = api.post("/v1/edits", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["input"]["beta"] == 0.15


def test_malformed_json_and_unknown_image(queued):
    api, _ = queued
    broken = api.post("/v1/edits", content=b"{not json", headers={"content-type": "application/json"})
    assert (broken.status_code, broken.json()["code"]) == (422, "validation_error")
    missing = api.post("/v1/edits", json=_body("img_nope"))
    assert (missing.status_code, missing.json()["code"]) == (404, "image_not_found")


def test_cancel_while_queued(queued):
    api, image_id = queued
    edit = api.post("/v1/edits", json=_body(image_id)).json()
    canceled = api.post(f"/v1/edits/{edit['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert canceled.json()["completed_at"] and canceled.json()["queue_position"] is None
    again = api.post(f"/v1/edits/{edit['id']}/cancel")  # idempotent
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    assert api.get(f"/v1/edits/{edit['id']}/outputs/0").json()["code"] == "output_not_found"


def test_prefer_wait_returns_the_unfinished_edit_after_n_seconds(queued):
    api, image_id = queued
    start = time.monotonic()
    response = api.post("/v1/edits", json=_body(image_id), headers={"Prefer": "wait=1"})
    assert 1.0 <= time.monotonic() - start < 5
    assert response.status_code == 201 and response.json()["status"] == "starting"
    assert response.headers["preference-applied"] == "wait=1"
    bad = api.post("/v1/edits", json=_body(image_id), headers={"Prefer": "wait=soon"})
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_prefer")


# Header bytes reach the app decoded as latin-1: b"\xb2" is "²", which str.isdigit() accepted and int() refused,
# a 500 (issue 23); so did 5000 ASCII digits, past int()'s limit. (UTF-8 superscripts arrive as "Â²".)
NOT_ASCII_INTEGERS = [b"wait=\xb2", b"wait=\xb9", b"wait=\xb3", b"wait=1\xb2", "wait=²".encode(),
                      "wait=٣".encode(), b"wait=" + b"9" * 5000]


@pytest.mark.parametrize("prefer", NOT_ASCII_INTEGERS)
def test_prefer_wait_that_is_not_an_ascii_integer_is_a_400(queued, prefer):
    api, image_id = queued
    listed = api.get("/v1/edits", params={"limit": 1}).json()["results"]
    response = api.exact("POST", "/v1/edits", json=_body(image_id), headers={"Prefer": prefer})
    assert (response.status_code, response.json()["code"]) == (400, "invalid_prefer"), response.text
    assert api.get("/v1/edits", params={"limit": 1}).json()["results"] == listed  # nothing queued


def test_prefer_wait_on_an_edit_deleted_meanwhile_is_not_found(queued_settings):
    """Deleting the photo while a submit holds its answer cancels the edit, then deletes its row: the held
    answer is the canceled edit, or 404 `edit_not_found` when it re-reads after the row is gone; never a
    server error. The delete goes through a second app instance."""
    import threading

    from fastapi.testclient import TestClient

    from api.main import create_app
    from tests.services.api import Api

    waiter = make_api(queued_settings, name="waiter")
    deleter = Api(TestClient(create_app(queued_settings)), waiter.key)  # the same account, another app
    image_id = waiter.upload(face_jpeg())["id"]
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.update(response=waiter.post(
        "/v1/edits", json=_body(image_id), headers={"Prefer": "wait=4"})))
    thread.start()
    deadline = time.monotonic() + 3
    while not deleter.get("/v1/edits", params={"limit": 1}).json()["results"] and time.monotonic() < deadline:
        time.sleep(0.05)  # until the submit has written its row
    assert deleter.delete(f"/v1/images/{image_id}").status_code == 204
    thread.join(timeout=10)
    response = answer["response"]
    outcome = (response.status_code, response.json().get("code") or response.json().get("status"))
    assert outcome in ((404, "edit_not_found"), (201, "canceled")), response.text


def test_list_pages_with_a_cursor(queued_settings):
    api = make_api(queued_settings, name="lister")
    image_id = api.upload(face_jpeg())["id"]
    ids = [api.post("/v1/edits", json=_body(image_id)).json()["id"] for _ in range(3)]
    first = api.get("/v1/edits", params={"limit": 2}).json()
    second = api.get("/v1/edits", params={"limit": 2, "cursor": first["next"]}).json()
    assert [e["id"] for e in first["results"] + second["results"]] == ids[::-1]
    assert second["next"] is None
    garbage = api.get("/v1/edits", params={"cursor": "garbage!"})
    assert (garbage.status_code, garbage.json()["code"]) == (422, "invalid_cursor")
    assert api.get("/v1/edits", params={"limit": 0}).status_code == 422


def _statements(api, call) -> tuple[int, object]:
    """How many SQL statements the API's engine ran while `call()` ran, and its result."""
    engine, seen = api.client.app.state.engine, []

    def count(*_args) -> None:
        seen.append(1)

    event.listen(engine, "before_cursor_execute", count)
    try:
        result = call()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(seen), result


def test_a_page_costs_the_same_statements_whatever_its_size(queued_settings):
    """Queue positions are read for the whole page at once (was one count per row)."""
    api = make_api(queued_settings, name="pager")
    image_id = api.upload(face_jpeg())["id"]
    for _ in range(12):
        assert api.post("/v1/edits", json=_body(image_id)).status_code == 201
    few, small = _statements(api, lambda: api.get("/v1/edits", params={"limit": 2}))
    many, large = _statements(api, lambda: api.get("/v1/edits", params={"limit": 12}))
    assert small.status_code == large.status_code == 200
    assert many == few, (few, many)
    positions = [edit["queue_position"] for edit in large.json()["results"]]  # newest first, all starting
    assert all(a - b == 1 for a, b in zip(positions, positions[1:], strict=False)) and positions[-1] >= 0
    one = api.get(f"/v1/edits/{large.json()['results'][0]['id']}").json()
    assert one["queue_position"] == positions[0]


def test_someone_elses_edit_is_a_404(queued, queued_settings):
    api, image_id = queued
    edit = api.post("/v1/edits", json=_body(image_id)).json()
    stranger = make_api(queued_settings, name="stranger")
    for response in (
        stranger.get(f"/v1/edits/{edit['id']}"),
        stranger.post(f"/v1/edits/{edit['id']}/cancel"),
        stranger.get(f"/v1/edits/{edit['id']}/outputs/0"),
    ):
        assert (response.status_code, response.json().get("code")) == (404, "edit_not_found"), response.text
    assert stranger.get("/v1/edits").json()["results"] == []


def test_authentication(queued):
    api, _ = queued
    client = api.client
    assert client.get("/v1/edits").json()["code"] == "unauthorized"
    wrong = client.get("/v1/edits", headers={"Authorization": "Bearer fe_not-a-key"})
    assert (wrong.status_code, wrong.json()["code"]) == (401, "unauthorized")
    assert wrong.headers["www-authenticate"] == "Bearer"


def test_revoked_key_stops_working(queued_settings):
    from api.keys import create_key, revoke_key

    api = make_api(queued_settings.model_copy(update={"auth_cache_seconds": 0}))  # no replica-local memory
    with api.client.app.state.session_factory() as session:
        row, key = create_key(session, "short-lived")
        headers = {"Authorization": f"Bearer {key}"}
        assert api.client.get("/v1/edits", headers=headers).status_code == 200
        assert revoke_key(session, row.id, redis_url=queued_settings.redis_url)
    assert api.client.get("/v1/edits", headers=headers).status_code == 401


def test_errors_are_json_everywhere(queued):
    api, _ = queued
    assert api.get("/v1/nothing-here").json() == {"code": "not_found", "message": "Not Found"}
    assert api.client.delete("/healthz").json()["code"] == "method_not_allowed"
    assert api.client.get("/healthz").json() == {"status": "ok", "checks": None}
    ready = api.client.get("/readyz").json()
    assert ready["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    assert api.client.get("/docs").status_code == 200
    assert "/v1/edits" in api.client.get("/openapi.json").json()["paths"]
    config = api.client.get("/app-config.json").json()
    assert (config["api_base"], config["dev_api_key"]) == ("/v1", None)


def test_readyz_reports_an_unreachable_broker(queued_settings):
    api = make_api(queued_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    response = api.client.get("/readyz")
    assert response.status_code == 503 and response.json()["code"] == "not_ready"
    assert response.json()["checks"]["broker"].startswith("error")


# --- several faces and several changes (#17) ------------------------------------------------------------


def _detected(api, image_id: str, count: int) -> None:
    """Record `count` detected faces on the image, as the worker's `detect_faces` does (tests/worker covers
    the detection itself)."""
    from common.models import Image

    faces = [{"index": i, "box": [10 + 40 * i, 10, 40 + 40 * i, 40], "score": 0.9} for i in range(count)]
    with api.client.app.state.session_factory() as session:
        image = session.get(Image, image_id)
        image.faces, image.faces_status = faces, "done"
        session.commit()


def test_faces_and_changes_forms(queued):
    api, _ = queued
    image_id = api.upload(face_jpeg())["id"]
    _detected(api, image_id, 2)
    changes = [{"neutral": "a face", "target": "a smiling face", "weight": 1},
               {"neutral": "a face", "target": "a face with blue hair", "weight": -0.5}]
    response = api.post("/v1/edits", json=_body(image_id, neutral=None, target=None, changes=changes, faces="all"))
    assert response.status_code == 201, response.text
    edit = response.json()["input"]
    assert edit["changes"] == [{**c, "weight": float(c["weight"])} for c in changes]
    assert edit["neutral"] is None and edit["target"] is None and edit["faces"] == "all"
    assert "likeness" not in response.json()  # nothing rendered yet: absent
    response = api.post("/v1/edits", json=_body(image_id, faces=[1, 0]))
    assert response.status_code == 201 and response.json()["input"]["faces"] == [1, 0]


def test_a_face_index_the_photo_does_not_have_is_422_naming_the_range(queued):
    api, _ = queued
    image_id = api.upload(face_jpeg())["id"]
    pending = api.post("/v1/edits", json=_body(image_id, faces=[3]))
    assert pending.status_code == 201  # faces not known yet: the job applies the same rule
    _detected(api, image_id, 2)
    response = api.post("/v1/edits", json=_body(image_id, faces=[0, 2]))
    assert response.status_code == 422 and response.json()["code"] == "invalid_parameter"
    assert "0..1" in response.json()["message"]
    _detected(api, image_id, 1)
    response = api.post("/v1/edits", json=_body(image_id, faces=[1]))
    assert response.status_code == 422 and "valid indices 0)" in response.json()["message"]


@pytest.mark.parametrize(
    "changes",
    [
        {"changes": [{"neutral": "a face", "target": "a smiling face", "weight": 1}]},  # both forms
        {"neutral": None, "target": None},  # neither
        {"target": None},  # half of the one-change form
        {"neutral": None, "target": None, "changes": []},
        {"neutral": None, "target": None, "changes": [{"neutral": "a", "target": "b", "weight": 0}]},
        {"neutral": None, "target": None, "changes": [{"neutral": "a", "target": "b", "weight": 2.5}]},
        {"neutral": None, "target": None, "changes": [{"neutral": " ", "target": "b", "weight": 1}]},
        {"neutral": None, "target": None, "changes": [{"neutral": "a", "target": "b" * (MAX_TEXT_CHARS + 1)}]},
        {"neutral": None, "target": None, "changes": [{"neutral": "a", "target": "b", "weight": 1}] * 2},
        {"neutral": None, "target": None, "changes": [{"neutral": "a", "target": f"b{i}"} for i in range(5)]},
        {"faces": [0] + list(range(1, 9))},  # MAX_FACES_PER_EDIT is 8
        {"faces": "everyone"},
        {"faces": []},
    ],
)
def test_faces_and_changes_validation_is_422(queued, changes):
    api, image_id = queued
    body = {k: v for k, v in _body(image_id, **changes).items() if v is not None}
    response = api.post("/v1/edits", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


def test_finished_outputs_are_served_while_the_edit_is_processing(queued):
    """What a worker records as each strength finishes (tests/worker covers the job's side): the resource
    lists the finished URL and null for the rest, the finished one is served, the others are 404."""
    from common.models import Edit

    api, image_id = queued
    edit_id = api.post("/v1/edits", json=_body(image_id)).json()["id"]
    key = f"results/{edit_id}/1.jpg"
    api.client.app.state.storage.put(key, b"\xff\xd8 a finished strength", "image/jpeg")
    with api.client.app.state.session_factory() as session:
        edit = session.get(Edit, edit_id)
        edit.status, edit.output_keys, edit.likeness = "processing", [None, key, None], [None, 0.8, None]
        session.commit()
    edit = api.get(f"/v1/edits/{edit_id}").json()
    assert edit["status"] == "processing" and edit["output"][0] is None and edit["output"][2] is None
    assert edit["output"][1] and edit["likeness"] == [None, 0.8, None]
    assert api.get(f"/v1/edits/{edit_id}/outputs/1").content == b"\xff\xd8 a finished strength"
    missing = api.get(f"/v1/edits/{edit_id}/outputs/0")
    assert missing.status_code == 404 and missing.json()["code"] == "output_not_found"


# --- cost-aware admission (common/edit_cost.py) ---------------------------------------------------------------


def _one_face_optimize(image_id: str) -> dict:
    return _body(image_id, alphas=[1], mode="optimize")


def test_an_edit_costing_more_than_the_ceiling_is_refused_naming_it(queued):
    """Six faces in optimize mode held the only edit worker past the 30-minute deadline (issue 23)."""
    api, image_id = queued
    def listed() -> list[str]:  # the ids only: an edit listed may be processing, its progress moving meanwhile
        return [edit["id"] for edit in api.get("/v1/edits", params={"limit": 100}).json()["results"]]

    before = listed()
    refused = api.post("/v1/edits", json=_body(image_id, alphas=[1], mode="optimize", faces=[0, 1, 2, 3, 4, 5]))
    assert (refused.status_code, refused.json()["code"]) == (422, "edit_cost_too_high"), refused.text
    assert "MAX_EDIT_COST_SECONDS" in refused.json()["message"]
    assert listed() == before  # nothing stored


def test_an_accounts_unfinished_work_is_capped_by_its_cost(queued_settings):
    from common.edit_contract import EditSpec
    from common.edit_cost import StageSeconds, edit_cost

    settings = queued_settings.model_copy(update={"max_queued_cost_seconds_per_owner": 1000.0})
    api = make_api(settings)
    image_id = api.upload(face_jpeg())["id"]
    one = edit_cost(EditSpec.model_validate({"changes": [{"neutral": "a face", "target": "a smiling face"}],
                                             "alphas": [1.0], "mode": "optimize"}), 1, StageSeconds.from_settings(settings))
    fits = int(1000 // one)
    for _ in range(fits):
        assert api.post("/v1/edits", json=_one_face_optimize(image_id)).status_code == 201
    refused = api.post("/v1/edits", json=_one_face_optimize(image_id))
    assert (refused.status_code, refused.json()["code"]) == (429, "cost_budget_exceeded"), refused.text
    assert "MAX_QUEUED_COST_SECONDS_PER_OWNER" in refused.json()["message"] and int(refused.headers["retry-after"]) >= 1
    assert api.post("/v1/edits", json=_body(image_id, alphas=[1])).status_code == 201  # a cheap edit still fits
    assert len(api.get("/v1/edits", params={"limit": 100}).json()["results"]) == fits + 1


def test_the_deadline_and_the_estimate_come_from_the_cost(queued):
    from common.models import Edit

    api, image_id = queued
    first = api.post("/v1/edits", json=_one_face_optimize(image_id)).json()
    second = api.post("/v1/edits", json=_body(image_id, faces=[0, 1])).json()
    settings = api.client.app.state.settings
    with api.client.app.state.session_factory() as session:
        for out in (first, second):
            row = session.get(Edit, out["id"])
            assert out["estimate"]["cost_seconds"] == row.cost_seconds > 0
            allowed = (row.deadline_at - row.created_at).total_seconds()
            assert allowed == pytest.approx(settings.job_deadline_seconds + 2 * row.cost_seconds, abs=0.01)
    assert first["estimate"]["cost_seconds"] > 10 * second["estimate"]["cost_seconds"]  # optimize: minutes
    # The queue ahead of the second is the first's plus what was ahead of the first; a poll reads the same numbers.
    assert second["queue_position"] == first["queue_position"] + 1
    ahead = first["estimate"]["queue_seconds"] + first["estimate"]["cost_seconds"]
    assert second["estimate"]["queue_seconds"] == pytest.approx(ahead, abs=0.01)
    polled = api.get(f"/v1/edits/{second['id']}").json()
    assert (polled["queue_position"], polled["estimate"]) == (second["queue_position"], second["estimate"])
