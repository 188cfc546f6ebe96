"""H1 (addresses): the API's image and its k8s manifest must not make uvicorn believe `X-Forwarded-For` from
anyone (`--forwarded-allow-ips *` used to), or a client without a key picks the address its failures are
limited by (the API side: tests/api/test_ingress_forwarded.py)."""

from __future__ import annotations

import re

import pytest

from common.settings import REPO_ROOT

pytestmark = pytest.mark.trust


@pytest.mark.parametrize("path", ["infra/docker/api.Dockerfile", "infra/k8s/api.yaml"])
def test_images_do_not_trust_every_proxy(path):
    text = (REPO_ROOT / path).read_text()
    assert not re.search(r"forwarded-allow-ips\W+\*", text), f"{path} trusts X-Forwarded-For from anyone"
    assert not re.search(r"FORWARDED_ALLOW_IPS\W+\*", text), path
