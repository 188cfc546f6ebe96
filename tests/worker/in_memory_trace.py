"""One edit through the API and a real Celery worker in ONE process, both tracing into one SDK in-memory exporter
(`InMemorySpanExporter`, given to `common.tracing.configure_tracing`): the API app behind a TestClient, the
worker a Celery `WorkController` (solo pool, the deployment's queues) on a thread, a webhook receiver on
loopback. Writes the finished edit, its webhook message and every span to the JSON file named by its argument.

A program, not a test: tracing is process-wide (one tracer provider, instrumented libraries), so it runs in a
process of its own and the test process stays untraced (tests/worker/test_tracing.py starts it with the
deployment's settings in its environment)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(out: Path) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from common import tracing

    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("faceedit", exporter=exporter)  # before the app, the engine, Celery

    from celery.contrib.testing.worker import start_worker
    from fastapi.testclient import TestClient

    from api.keys import create_key
    from api.main import create_app
    from common import topology
    from common.db import make_engine, make_session_factory
    from common.settings import get_settings
    from tests.conftest import face_jpeg
    from tests.services.api import wait_for_edit
    from tests.services.webhook_receiver import Receiver
    from worker.app import app as celery_app

    settings = get_settings()
    with make_session_factory(make_engine(settings.database_url))() as session:
        _, key = create_key(session, "in-memory-trace")
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=60,
                      queues=topology.queues(settings)), \
            TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client, \
            Receiver() as hook:  # fmt: skip
        image = client.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")}).json()
        started = time.monotonic()
        created = client.post("/v1/edits", json={
            "image": image["id"], "neutral": "a face", "target": "a smiling face", "alphas": [0, 2], "beta": 0.1,
            "webhook": hook.url, "webhook_events_filter": ["completed"],
        })  # fmt: skip
        assert created.status_code == 201, created.text
        edit = wait_for_edit(client, created.json()["id"])
        wall_seconds = time.monotonic() - started
        hook.wait_for_request()
        time.sleep(1)  # the delivery task's span ends after the POST
        message = json.loads(hook.requests[0].body)
    spans = [{
        "service": span.resource.attributes.get("service.name", ""), "name": span.name,
        "trace_id": f"{span.context.trace_id:032x}", "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None, "kind": span.kind.value,
        "start_ns": span.start_time, "end_ns": span.end_time, "transport": "memory",
    } for span in exporter.get_finished_spans()]  # fmt: skip
    out.write_text(json.dumps({"edit": edit, "message": message, "wall_seconds": wall_seconds, "spans": spans}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
