"""Property-based fuzzing of the whole OpenAPI schema with schemathesis: every operation gets
schema-shaped and schema-violating requests (with a valid key, so the code behind auth is reached,
and in a share of cases with a broken one). The property: never a 5xx, and every error is
`{code, message}`. FUZZ_EXAMPLES sets the examples per operation and mode (default 25)."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.services.api import running_service
from tests.services.attack_counts import count
from tests.services.settings import local_settings

pytestmark = [pytest.mark.trust, pytest.mark.services]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def service(module_pg_url, tmp_path_factory):
    settings = local_settings(module_pg_url, tmp_path_factory.mktemp("fuzz"), max_upload_bytes=2 * 1024 * 1024)
    with running_service(settings) as svc:
        svc.image_id = svc.post_image().json()["id"]
        svc.edit_id = svc.submit(svc.image_id).json()["id"]
        yield svc


def _operations(service):
    schema = schemathesis.openapi.from_asgi("/openapi.json", service.client.app)
    ops = []
    for result in schema.get_all_operations():
        ops.append(result.ok())
    return ops


def test_fuzz_whole_schema_no_5xx(service):
    failures: list[str] = []
    operations = _operations(service)
    assert len(operations) >= 12, [op.label for op in operations]
    tried: Counter = Counter()
    keys = st.sampled_from([service.keys["alice"]] * 6 + [service.keys["bob"], service.keys["revoked"], "garbage"])
    for op in operations:
        # A path segment is a string whatever it holds: with nothing else to violate, negative
        # generation only burns time on rejected draws. Hostile ids are in test_adversarial.py.
        violable = len(op.body) > 0 or len(op.query) > 0 or len(op.headers) > 0
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if violable else (GenerationMode.POSITIVE,):
            _fuzz_operation(service, op, mode, keys, failures, tried)
    print(f"fuzz: {sum(tried.values())} cases; negative: {sum(n for (_, m), n in tried.items() if m is GenerationMode.NEGATIVE)}")
    assert tried[("POST /v1/edits", GenerationMode.NEGATIVE)] > 0 and tried[("POST /v1/images", GenerationMode.NEGATIVE)] > 0
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:30])


def _fuzz_operation(service, op, mode, keys, failures: list[str], tried: Counter) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode), key=keys, real=st.booleans())
    def run(case, key, real):
        if real and case.path_parameters:  # real ids now and then, so owned resources are reached too
            for name in case.path_parameters:
                if name == "image_id":
                    case.path_parameters[name] = service.image_id
                elif name == "edit_id":
                    case.path_parameters[name] = service.edit_id
        response = case.call(headers={"Authorization": f"Bearer {key}"})
        count("cases tried")
        tried[(op.label, mode)] += 1
        where = f"{op.label} [{mode.value}] {case.path_parameters} {str(case.body)[:120]!r}"
        if response.status_code >= 500:
            count("5xx seen")
            failures.append(f"{response.status_code} {where}: {response.text[:200]}")
        elif response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not (isinstance(body, dict) and isinstance(body.get("code"), str)
                    and isinstance(body.get("message"), str)):
                failures.append(f"{response.status_code} without {{code, message}} {where}: {response.text[:200]}")

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, op.label  # nothing to violate (e.g. no parameters at all)
