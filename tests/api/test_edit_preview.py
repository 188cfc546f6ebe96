"""The first strength's preview through the API: the edit resource shows it (marked as the preview of one
output, with its URL and size) only while it stands in for that output; its route answers its owner alone,
and 404 `preview_not_found` before it, once the full-size output replaced it, once the edit ended, and once
the object is gone; nothing of it survives the photo's deletion. Webhook filters take `preview`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from common.db import upgrade
from common.lifecycle import EditStatus
from common.models import Edit, new_id, utcnow
from common.storage import LocalStorage
from common.storage_layout import preview_key, result_key
from tests.services.api import running_service
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]

JPEG = b"\xff\xd8 a preview"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit-preview")
    url = f"sqlite:///{folder / 'edits.db'}"
    upgrade(url)
    with running_service(local_settings(url, folder / "storage")) as svc:
        svc.image_id = svc.post_image().json()["id"]
        with svc.factory() as session:
            svc.owner = session.get(Edit, svc.submit(svc.image_id).json()["id"]).owner
        svc.storage = LocalStorage(svc.settings.storage_dir)
        yield svc


def _edit(service, status=EditStatus.PROCESSING, output_keys=None, preview: dict | None = None,
          image_id: str | None = None) -> str:
    """A row of alice's in `status` whose preview stands in for output 1 (of three) unless `preview`."""
    edit_id, now = new_id("edt"), utcnow()
    key = preview_key(edit_id)
    with service.factory() as session:
        session.add(Edit(
            id=edit_id, owner=service.owner, image_id=image_id or service.image_id,
            changes=[{"neutral": "a face", "target": "a smile", "weight": 1.0}], alphas=[-1, 0, 1], beta=0.15,
            mode="global", output_format="png", status=status, attempt=1, created_at=now, started_at=now,
            output_keys=output_keys, deadline_at=now + timedelta(minutes=5),
            preview=preview if preview is not None else {"key": key, "index": 1, "width": 96, "height": 128},
        ))  # fmt: skip
        session.commit()
    service.storage.put(key, JPEG, "image/jpeg")
    return edit_id


def _get(service, edit_id: str, who: str = "alice"):
    return service.client.get(f"/v1/edits/{edit_id}", headers=service.auth(who))


def _preview(service, edit_id: str, who: str = "alice"):
    return service.client.get(f"/v1/edits/{edit_id}/preview", headers=service.auth(who))


def test_a_processing_edit_shows_its_preview_until_the_output_replaces_it(service):
    edit_id = _edit(service)
    shown = _get(service, edit_id).json()
    assert shown["status"] == "processing" and shown["output"] is None
    assert shown["preview"] == {"index": 1, "url": f"http://testserver/v1/edits/{edit_id}/preview",
                                "width": 96, "height": 128}
    answer = _preview(service, edit_id)
    assert answer.status_code == 200 and answer.content == JPEG
    assert answer.headers["content-type"] == "image/jpeg" and "no-store" in answer.headers["cache-control"]
    # another output first: the preview still stands in for output 1
    with service.factory() as session:
        session.get(Edit, edit_id).output_keys = [result_key(edit_id, 0, "png"), None, None]
        session.commit()
    assert _get(service, edit_id).json()["preview"]["index"] == 1
    # output 1 lands: the preview is gone from the resource and its route, even before the object is deleted
    with service.factory() as session:
        session.get(Edit, edit_id).output_keys = [result_key(edit_id, 0, "png"), result_key(edit_id, 1, "png"), None]
        session.commit()
    assert _get(service, edit_id).json()["preview"] is None
    gone = _preview(service, edit_id)
    assert gone.status_code == 404 and gone.json()["code"] == "preview_not_found"


@pytest.mark.parametrize("status", [EditStatus.STARTING, EditStatus.SUCCEEDED, EditStatus.FAILED,
                                    EditStatus.CANCELED])
def test_no_preview_outside_processing(service, status):
    """A row that still names a preview after its run (a reaped job requeued, a cancel, a crash between the
    row's write and the object's deletion) shows none and serves none."""
    edit_id = _edit(service, status=status)
    assert _get(service, edit_id).json()["preview"] is None
    answer = _preview(service, edit_id)
    assert answer.status_code == 404 and answer.json()["code"] == "preview_not_found"


def test_someone_elses_preview_is_a_missing_edit(service):
    edit_id = _edit(service)
    for who in ("bob", "revoked"):
        answer = _preview(service, edit_id, who)
        assert answer.status_code in (401, 404) and answer.content != JPEG
    assert _preview(service, edit_id, "bob").json()["code"] == "edit_not_found"
    assert service.client.get(f"/v1/edits/{edit_id}/preview").status_code == 401  # no key at all
    assert _preview(service, "edt_nope").json()["code"] == "edit_not_found"


@pytest.mark.parametrize("stored", [
    {"key": 7, "index": 1}, {"key": "results/x/preview.jpg", "index": "1"}, {"index": 1}, {}, ["a"],
])
def test_a_malformed_preview_on_the_row_is_no_preview(service, stored):
    edit_id = _edit(service, preview=stored)
    assert _get(service, edit_id).json()["preview"] is None
    assert _preview(service, edit_id).json()["code"] == "preview_not_found"


def test_a_preview_gone_from_storage_is_a_404(service):
    edit_id = _edit(service)
    service.storage.delete([preview_key(edit_id)])
    answer = _preview(service, edit_id)
    assert answer.status_code == 404 and answer.json()["code"] == "preview_not_found"


def test_deleting_the_photo_takes_the_preview_with_it(service):
    image_id = service.post_image().json()["id"]
    edit_id = _edit(service, image_id=image_id)
    assert _preview(service, edit_id).status_code == 200
    assert service.client.delete(f"/v1/images/{image_id}", headers=service.auth()).status_code == 204
    assert _preview(service, edit_id).json()["code"] == "edit_not_found"
    assert service.storage.list(f"results/{edit_id}/") == []


def test_webhook_filters_take_preview_and_refuse_unknown_events(service):
    body = {"webhook": "https://hooks.example/x", "webhook_events_filter": ["preview", "output"]}
    made = service.submit(service.image_id, **body)
    assert made.status_code == 201 and made.json()["webhook_events_filter"] == ["preview", "output"]
    wrong = service.submit(service.image_id, webhook="https://hooks.example/x", webhook_events_filter=["previews"])
    assert wrong.status_code == 422
