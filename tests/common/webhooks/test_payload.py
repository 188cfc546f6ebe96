"""A webhook message's `data` is the edit resource the API serves, field for field (one serializer,
`common.edit_resource`): the webhook copy used to miss `model`, `progress`, `queue_position`, `webhook` and
`webhook_events_filter`, which docs/SECURITY.md promises."""

import json
from datetime import timedelta

import pytest

from api.schemas import EditOut
from common.models import Edit, WebhookDelivery, new_id, utcnow
from common.webhooks import outbox
from tests.services.api import running_service
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]


@pytest.fixture
def service(fresh_pg_url, tmp_path):
    # Links in messages start with PUBLIC_BASE_URL; the test client's base is http://testserver.
    settings = local_settings(fresh_pg_url, tmp_path / "storage", public_base_url="http://testserver")
    with running_service(settings) as svc:
        yield svc


@pytest.mark.parametrize("status", ["succeeded", "failed", "canceled"])
def test_webhook_data_is_the_api_resource(service, status):
    image_id = service.post_image().json()["id"]
    now = utcnow()
    edit_id = new_id("edt")
    with service.factory() as s:
        s.add(Edit(
            id=edit_id, owner="alice", image_id=image_id, changes=[{"neutral": "a face", "target": "a smiling face", "weight": 1.0}],
            alphas=[-1.0, 2.0], beta=0.15, mode="global", output_format="png",
            webhook="https://hooks.example/edits?token=t", webhook_events_filter=["completed"], status=status,
            attempt=1, deadline_at=now + timedelta(hours=1), created_at=now - timedelta(seconds=3),
            started_at=now - timedelta(seconds=2), completed_at=now,
            output_keys={"succeeded": [f"results/{edit_id}/0.png", f"results/{edit_id}/1.png"],
                         "canceled": [f"results/{edit_id}/0.png", None]}.get(status),  # canceled: one kept
            likeness={"succeeded": [0.91, 0.62], "canceled": [0.91, None]}.get(status),
            error_code="no_face" if status == "failed" else None,
            error_message="no face found" if status == "failed" else None,
            metrics={"total_seconds": 1.5, "inversion_cached": False, "attempt": 1},
            model={"generator": "0123456789ab", "encoder": "ba9876543210", "dev_bundle": True},
            trace_id="0af7651916cd43dd8448eb211c80319c",
        ))
        s.commit()
        (delivery_id,) = outbox.record_events(s, s.get(Edit, edit_id), service.settings.public_base_url)
        message = json.loads(s.get(WebhookDelivery, delivery_id).payload)
    api = service.client.get(f"/v1/edits/{edit_id}", headers=service.auth())
    assert api.status_code == 200, api.text
    assert message["type"] == "edit.completed"
    absent = {"likeness"} if status == "failed" else set()  # only with an identity model, never when failed
    assert set(message["data"]) == set(EditOut.model_fields) - absent
    assert message["data"] == api.json()
    assert message["data"]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
