"""Webhook URLs at submission, through the real API: a refusal does not tell the internal address a host
name resolves to, and ports other than 80/443 need the operator's WEBHOOK_ALLOW_PORTS."""

import pytest
from pydantic import ValidationError

from common.settings import Settings
from tests.services.api import running_service
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]


@pytest.fixture
def service(fresh_pg_url, tmp_path):
    with running_service(local_settings(fresh_pg_url, tmp_path / "storage", webhook_allow_ports="6379")) as svc:
        yield svc


def test_a_refused_host_name_does_not_reveal_its_address(service):
    image_id = service.post_image().json()["id"]
    r = service.submit(image_id, webhook="http://localhost/hook")
    assert (r.status_code, r.json()["code"]) == (422, "url_forbidden_address")
    message = r.json()["message"]
    assert "127.0.0.1" not in message and "::1" not in message and "loopback" not in message
    assert "private/reserved address" in message


@pytest.mark.parametrize(("url", "status"), [
    ("https://93.184.216.34/hook", 201),
    ("http://93.184.216.34:80/hook", 201),
    ("http://93.184.216.34:6379/hook", 201),  # allowed by WEBHOOK_ALLOW_PORTS in this deployment
    ("http://93.184.216.34:25/hook", 422),
    ("https://93.184.216.34:8443/hook", 422),
])
def test_port_policy_at_submission(service, url, status):
    image_id = service.post_image().json()["id"]
    r = service.submit(image_id, webhook=url)
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["code"] == "url_forbidden_port"


@pytest.mark.parametrize("spec", ["²", "80;443", "8000-", "*", "1e3"])
def test_a_malformed_port_allowance_stops_the_service_at_start(spec):
    with pytest.raises(ValidationError):
        Settings(webhook_allow_ports=spec)
    assert Settings(webhook_allow_ports=" 8080, 9000-9100 ").webhook_allow_ports
