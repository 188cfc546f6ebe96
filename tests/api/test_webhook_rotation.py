"""M4: the webhook signing secret can be rotated. `POST /v1/webhooks/secret/rotate` (idempotent under
`Idempotency-Key`) makes a new secret; for WEBHOOK_SECRET_GRACE_HOURS every message carries a signature
made with each secret, after that only the new one; `GET /v1/webhooks/secret` shows when the old one ends.
Checked with the reference `standardwebhooks` verifier against a real receiver."""

from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as ReferenceError

from common import netguard
from common.models import Edit, Image, WebhookSecret, new_id, utcnow
from common.webhooks import outbox
from tests.services.api import running_service
from tests.services.settings import local_settings
from tests.services.webhook_receiver import Receiver
from worker.deliveries import DeliveryConfig, attempt

pytestmark = [pytest.mark.trust, pytest.mark.services]

CONFIG = DeliveryConfig(policy=netguard.NetPolicy.from_strings(["127.0.0.0/8"], ports="1024-65535", deadline_s=3))


@pytest.fixture
def service(fresh_pg_url, tmp_path):
    with running_service(local_settings(fresh_pg_url, tmp_path / "storage", webhook_secret_grace_hours=24)) as svc:
        yield svc


def _secret(service, who="alice") -> dict:
    r = service.client.get("/v1/webhooks/secret", headers=service.auth(who))
    assert r.status_code == 200, r.text
    return r.json()


def _deliver_once(service, url: str, owner: str):
    """One `completed` message of a fresh edit of `owner`, sent to `url`; returns the request received."""
    with service.factory() as s:
        image = Image(id=new_id("img"), owner=owner, format="jpeg", width=64, height=64, bytes=1, sha256="0" * 64)
        now = utcnow()
        edit = Edit(id=new_id("edt"), owner=owner, image_id=image.id, changes=[{"neutral": "a face", "target": "a smiling face", "weight": 1.0}],
                    alphas=[1.0], beta=0.1, mode="global", output_format="jpeg", webhook=url,
                    webhook_events_filter=["completed"], status="canceled", attempt=0,
                    deadline_at=now + timedelta(hours=1), completed_at=now)
        s.add(image)
        s.flush()
        s.add(edit)
        s.commit()
        (delivery_id,) = outbox.record_events(s, edit)
    assert attempt(service.factory, CONFIG, delivery_id) is None
    return delivery_id


def _verifies(secret: str, request) -> bool:
    try:
        Webhook(secret).verify(request.body, request.headers)
        return True
    except ReferenceError:
        return False


def test_rotation_signs_with_both_secrets_during_the_grace_then_only_the_new_one(service):
    owner = "alice"
    old = _secret(service)
    assert old["previous_expires_at"] is None
    r = service.client.post("/v1/webhooks/secret/rotate", headers=service.auth(owner, **{"Idempotency-Key": "rot-1"}))
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["key"].startswith("whsec_") and new["key"] != old["key"]
    expires = datetime.fromisoformat(new["previous_expires_at"])
    assert timedelta(hours=23.9) < expires - utcnow() <= timedelta(hours=24)
    assert _secret(service) == new  # GET shows the new secret and when the old one ends

    with Receiver() as rx:
        _deliver_once(service, rx.url, owner)
        during = rx.requests[-1]
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        assert _verifies(old["key"], during) and _verifies(new["key"], during)

        with service.factory() as s:  # the grace period is over
            s.execute(update(WebhookSecret).where(WebhookSecret.owner == owner)
                      .values(previous_expires_at=utcnow() - timedelta(seconds=1)))
            s.commit()
        _deliver_once(service, rx.url, owner)
        after = rx.requests[-1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert _verifies(new["key"], after) and not _verifies(old["key"], after)
    assert _secret(service)["previous_expires_at"] is None


def test_a_retried_rotation_with_the_same_idempotency_key_rotates_once(service):
    before = _secret(service)["key"]
    headers = service.auth("alice", **{"Idempotency-Key": "rotate-once"})
    first = service.client.post("/v1/webhooks/secret/rotate", headers=headers)
    again = service.client.post("/v1/webhooks/secret/rotate", headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.json()["key"] == again.json()["key"] == _secret(service)["key"] != before
    third = service.client.post("/v1/webhooks/secret/rotate", headers=service.auth("alice"))
    assert third.json()["key"] != first.json()["key"]  # a new request (no key) is a new rotation


def test_rotation_is_per_account(service):
    bob = _secret(service, "bob")
    service.client.post("/v1/webhooks/secret/rotate", headers=service.auth("alice"))
    assert _secret(service, "bob") == bob and bob["previous_expires_at"] is None


def test_rotation_needs_a_valid_key(service):
    r = service.client.post("/v1/webhooks/secret/rotate", headers=service.auth("revoked"))
    assert r.status_code == 401
