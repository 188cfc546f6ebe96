"""`/v1/edits` never answers 500 to what a client can send or to what storage can lose: a listing cursor at the
ends of the calendar (or anything else) is 422 `invalid_cursor`, a result object gone from storage is 404
`output_not_found`. On PostgreSQL and on SQLite."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.db import upgrade
from common.lifecycle import EditStatus
from common.models import Edit, new_id, utcnow
from common.storage import LocalStorage
from common.storage_layout import result_key
from tests.services.api import running_service
from tests.services.attack_counts import count
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def service(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edits-route")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'edits.db'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("module_pg_url")
    with running_service(local_settings(url, folder / "storage")) as svc:
        svc.image_id = svc.post_image().json()["id"]
        for _ in range(2):
            assert svc.submit(svc.image_id).status_code == 201
        yield svc


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _list(service, cursor: str):
    count("cases tried")
    response = service.client.get("/v1/edits", params={"cursor": cursor, "limit": 1}, headers=service.auth())
    if response.status_code >= 500:
        count("5xx seen")
    return response


def test_a_real_cursor_pages(service):
    first = service.client.get("/v1/edits", params={"limit": 1}, headers=service.auth()).json()
    second = _list(service, first["next"])
    assert second.status_code == 200 and second.json()["results"][0]["id"] != first["results"][0]["id"]


@pytest.mark.parametrize(
    "raw",
    [
        "9999-12-31T23:59:59.999999-14:00|edt_x",  # past year 9999 once shifted to UTC (was an OverflowError)
        "0001-01-01T00:00:00+14:00|edt_x",  # before year 1 in UTC
        "9999-12-31T23:59:59-23:59|edt_x",
        "0001-01-01T00:00:00+23:59|edt_x",
        "2026-01-01T00:00:00|edt_x",  # naive
        "2026-01-01T00:00:00+00:00|edt\x00x",  # a NUL byte PostgreSQL refuses in a string
        "2026-01-01T00:00:00+00:00|" + "é" * 30,
        "1e400|edt_x",
        "99999999999999999999|edt_x",
        "no separator",
    ],
)
def test_impossible_cursors_are_422_invalid_cursor(service, raw):
    response = _list(service, _cursor(raw))
    assert (response.status_code, response.json()["code"]) == (422, "invalid_cursor"), response.text


def test_the_ends_of_the_calendar_in_utc_are_valid_cursors(service):
    for raw in ("9999-12-31T23:59:59.999999+00:00|edt_x", "0001-01-01T00:00:00+00:00|edt_x"):
        response = _list(service, _cursor(raw))
        assert response.status_code == 200, response.text


_offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))
_dates = st.datetimes(timezones=st.builds(timezone, _offsets)).map(lambda d: d.isoformat())
_ids = st.text(max_size=40) | st.from_regex(r"edt_[0-9a-z]{26}", fullmatch=True)
_cursors = (
    st.builds(lambda date, edit_id: _cursor(f"{date}|{edit_id}"), _dates, _ids)
    | st.text(max_size=80).map(_cursor)
    | st.text(max_size=80)
)


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cursor=_cursors)
@example(cursor=_cursor(f"{datetime.max.isoformat()}-14:00|edt_x"))
@example(cursor=_cursor(f"{datetime.min.isoformat()}+14:00|edt_x"))
def test_fuzzed_cursors_are_a_page_or_422(service, cursor):
    response = _list(service, cursor)
    assert response.status_code in (200, 422), (cursor, response.status_code, response.text[:200])
    if response.status_code == 422:  # over the query's max_length, or not a cursor this API wrote
        assert response.json()["code"] in ("invalid_cursor", "validation_error"), response.text


def test_an_output_gone_from_storage_is_a_404(service):
    """A succeeded edit whose result object was removed behind the row's back (retention, an operator, a lost
    bucket): the row still lists the key, the bytes are gone."""
    edit_id = new_id("edt")
    keys = [result_key(edit_id, 0, "jpeg"), result_key(edit_id, 1, "jpeg")]
    now = utcnow()
    with service.factory() as session:
        owner = session.get(Edit, service.submit(service.image_id).json()["id"]).owner
        session.add(Edit(
            id=edit_id, owner=owner, image_id=service.image_id, changes=[{"neutral": "a face", "target": "a smile", "weight": 1.0}],
            alphas=[0, 1], beta=0.15, mode="global", output_format="jpeg", status=EditStatus.SUCCEEDED,
            attempt=1, created_at=now, started_at=now, completed_at=now, output_keys=keys,
            deadline_at=now + timedelta(minutes=5),
        ))  # fmt: skip
        session.commit()
    LocalStorage(service.settings.storage_dir).put(keys[0], b"\xff\xd8 a jpeg", "image/jpeg")
    present = service.client.get(f"/v1/edits/{edit_id}/outputs/0", headers=service.auth())
    assert present.status_code == 200 and present.content == b"\xff\xd8 a jpeg"
    gone = service.client.get(f"/v1/edits/{edit_id}/outputs/1", headers=service.auth())
    assert gone.status_code == 404, gone.text
    assert gone.json()["code"] == "output_not_found" and gone.headers["content-type"] == "application/json"


def test_cursor_times_round_trip_in_utc(service):
    """A cursor written with another offset names the same instant as its UTC form."""
    first = service.client.get("/v1/edits", params={"limit": 1}, headers=service.auth()).json()
    created, edit_id = base64.urlsafe_b64decode(first["next"] + "==").decode().split("|")
    shifted = datetime.fromisoformat(created).astimezone(timezone(timedelta(hours=-5)))
    assert shifted.astimezone(UTC) == datetime.fromisoformat(created)
    again = _list(service, _cursor(f"{shifted.isoformat()}|{edit_id}"))
    assert again.json()["results"] == _list(service, first["next"]).json()["results"]
