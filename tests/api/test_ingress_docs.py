"""Low: `/docs` loaded Swagger UI from a CDN without integrity checks, so the CDN could run script on
the API's origin. Now every asset is served from this origin under a Content-Security-Policy that
allows only same-origin scripts, and every response says `X-Content-Type-Options: nosniff`."""

from __future__ import annotations

import re

import pytest

from tests.services.api import running_service
from tests.services.attack_counts import count
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]


@pytest.fixture(scope="module")
def service(module_pg_url, tmp_path_factory):
    with running_service(local_settings(module_pg_url, tmp_path_factory.mktemp("storage"))) as svc:
        yield svc


def test_docs_load_nothing_from_elsewhere(service):
    page = service.client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources), sources
    assert "<script>" not in page.text  # no inline script: the policy allows none
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    for source in sources:
        asset = service.client.get(source)
        count("cases tried")
        assert asset.status_code == 200, source
    assert "SwaggerUIBundle" in service.client.get("/docs/assets/swagger-ui-bundle.js").text
    assert service.client.get("/openapi.json").json()["info"]["title"] == "faceedit"


def test_every_response_says_nosniff(service):
    for path, headers in (("/healthz", {}), ("/v1/edits", {}), ("/v1/edits", service.auth()),
                          ("/no/such/page", {}), ("/docs", {})):
        response = service.client.get(path, headers=headers)
        count("cases tried")
        assert response.headers.get("x-content-type-options") == "nosniff", path
