"""One trace per edit (common/tracing.py): with `OTEL_TRACES_EXPORTER=console` in a real API (uvicorn) and a real
worker, one edit with a webhook yields one connected trace: `POST /v1/edits` → the hand-written sender's
producer span → the worker's task → align, invert, direction, each strength's synthesize and paste → the
webhook delivery task; the stages in order, their durations within the job's; the job's log lines carry the
trace id. Spans are read back from what the console exporter printed (each process exports its own).
Without the variables nothing is traced: the same API answers with no span printed."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.topology import PROCESS_EDIT
from tests.conftest import face_jpeg, service_settings
from tests.services.api_process import ApiProcess
from tests.services.webhook_receiver import Receiver
from tests.services.worker import WorkerProcess

pytestmark = pytest.mark.services

SPAN_START = re.compile(r'^\{\n\s+"name": ', re.M)


def _spans(text: str) -> list[dict[str, Any]]:
    """The spans ConsoleSpanExporter printed into a process's output (indented JSON objects among log lines)."""
    decoder, spans = json.JSONDecoder(), []
    for match in SPAN_START.finditer(text):
        span, _ = decoder.raw_decode(text, match.start())
        spans.append(span)
    return spans


def _seconds(span: dict[str, Any]) -> float:
    start, end = (datetime.fromisoformat(span[key].replace("Z", "+00:00")) for key in ("start_time", "end_time"))
    return (end - start).total_seconds()


def _ancestors(span: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[str]:
    names = []
    while span.get("parent_id") in by_id:
        span = by_id[span["parent_id"]]
        names.append(span["name"])
    return names


def test_one_edit_is_one_connected_trace(pg_url, redis_url, s3_endpoint, dev_bundle, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # both processes' environment (settings_env copies it)
    settings = service_settings(
        pg_url, redis_url, s3_endpoint, model_dir=dev_bundle, log_format="json",
        webhook_allow_networks="127.0.0.0/8", webhook_allow_ports="1024-65535",
    )  # fmt: skip
    worker = WorkerProcess(settings, tmp_path / "worker.log", beat=False).start()
    try:
        with ApiProcess(settings, tmp_path / "api.log", OTEL_SERVICE_NAME="faceedit-api") as api, Receiver() as hook:
            from api.keys import create_key
            from common.db import make_engine, make_session_factory

            with make_session_factory(make_engine(settings.database_url))() as session:
                _, key = create_key(session, "tracing")
            client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            image = client.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")}).json()
            started = time.monotonic()
            created = client.post("/v1/edits", json={
                "image": image["id"], "neutral": "a face", "target": "a smiling face", "alphas": [0, 2],
                "beta": 0.1, "webhook": hook.url, "webhook_events_filter": ["completed"],
            })  # fmt: skip
            assert created.status_code == 201, created.text
            edit_id = created.json()["id"]
            while (edit := client.get(f"/v1/edits/{edit_id}").json())["status"] not in ("succeeded", "failed"):
                assert time.monotonic() - started < 240, edit
                time.sleep(0.2)
            assert edit["status"] == "succeeded", edit
            deadline = time.monotonic() + 30
            while not hook.requests:
                assert time.monotonic() < deadline, "no webhook delivered"
                time.sleep(0.2)
            time.sleep(1)  # the delivery task's span ends after the POST
            api_log = api.log()
    finally:
        worker.stop()

    api_spans, worker_spans = _spans(api_log), _spans(worker.log())
    submit = next(s for s in api_spans if s["name"] == "POST /v1/edits" and s["kind"] == "SpanKind.SERVER")
    trace_id = submit["context"]["trace_id"]  # "0x" + 32 hex digits in the console exporter's JSON
    spans = [s for s in api_spans + worker_spans if s["context"]["trace_id"] == trace_id]
    by_id = {s["context"]["span_id"]: s for s in spans}
    names = [s["name"] for s in sorted(spans, key=lambda s: s["start_time"])]
    print("trace", trace_id, ":", [(s["name"], round(_seconds(s), 3)) for s in
                                   sorted(spans, key=lambda s: s["start_time"])])  # fmt: skip

    produce = next(s for s in spans if s["name"] == f"apply_async/{PROCESS_EDIT.name}")
    run = next(s for s in spans if s["name"] == f"run/{PROCESS_EDIT.name}")
    assert "POST /v1/edits" in _ancestors(produce, by_id)
    assert run["parent_id"] == produce["context"]["span_id"], "the job continues the submit's trace"
    stages = [s for s in spans if s["name"] in {"align", "invert", "direction", "synthesize", "paste"}]
    assert {s["name"] for s in stages} == {"align", "invert", "direction", "synthesize", "paste"}, names
    for stage in stages:
        assert f"run/{PROCESS_EDIT.name}" in _ancestors(stage, by_id), stage["name"]
    first = {name: names.index(name) for name in ("align", "invert", "direction", "synthesize")}
    assert first["align"] < first["invert"] < first["direction"] < first["synthesize"], names
    assert sum(1 for s in stages if s["name"] == "synthesize") == 2, "a span per strength"
    assert sum(_seconds(s) for s in stages) <= _seconds(run) + 0.01
    assert _seconds(run) <= edit["metrics"]["total_seconds"] + 1.0
    deliveries = [s for s in spans if s["name"].startswith("run/") and s is not run]
    assert deliveries, f"the webhook delivery is not in the trace: {names}"
    assert any(s["name"].startswith(("SELECT", "INSERT", "UPDATE", "postgresql")) for s in spans), "no SQL spans"

    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith('{"time"')]
    job_lines = [line for line in lines if line.get("edit_id") == edit_id]
    assert job_lines and all(line.get("trace_id") == trace_id.removeprefix("0x") for line in job_lines), job_lines


def test_off_by_default_no_span(pg_url, redis_url, s3_endpoint, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    settings = service_settings(pg_url, redis_url, s3_endpoint)
    with ApiProcess(settings, tmp_path / "api.log") as api:
        assert httpx.get(f"{api.url}/v1/edits/ed_missing", timeout=10).status_code in (401, 404)
        assert not _spans(api.log())
