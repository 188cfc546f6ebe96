"""One trace per edit (common/tracing.py), through a real API (uvicorn) and a real worker: one edit with a
webhook yields one connected trace: `POST /v1/edits` → the hand-written sender's producer span → the worker's
task → align, invert, direction, each strength's synthesize and paste → the webhook delivery task; the stages
in order, their durations within the job's; the edit resource, its webhook message and the job's log lines
carry the trace id.

Exported three ways: `OTEL_TRACES_EXPORTER=console` (spans read back from what each process printed); `otlp`
to a real OTLP receiver on loopback (tests/services/otlp_receiver.py) over both transports, gRPC and
HTTP/protobuf, each used by the API in one run and by the worker in the other; and the SDK's in-memory
exporter shared by the API app and a Celery worker thread in one process (tests/worker/in_memory_trace.py).
Without the variables nothing is traced: the same API answers with no span printed (and edits carry no trace
id: tests/api/test_edits.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.topology import PROCESS_EDIT
from tests.conftest import face_jpeg, service_settings
from tests.services.api import wait_for_edit
from tests.services.api_process import ApiProcess
from tests.services.otlp_receiver import Receiver as OtlpReceiver
from tests.services.otlp_receiver import Span
from tests.services.settings import REPO_ROOT, settings_env
from tests.services.webhook_receiver import Receiver
from tests.services.worker import WorkerProcess

pytestmark = pytest.mark.services

SPAN_START = re.compile(r'^\{\n\s+"name": ', re.M)
STAGES = ("align", "invert", "direction", "synthesize", "paste")
# A client's W3C trace context on the submit: the API starts its own trace all the same.
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-00f067aa0ba902b7-01"


def _printed_spans(text: str) -> list[Span]:
    """The spans ConsoleSpanExporter printed into a process's output (indented JSON objects among log lines)."""
    decoder, spans = json.JSONDecoder(), []
    for match in SPAN_START.finditer(text):
        span, _ = decoder.raw_decode(text, match.start())
        start, end = (int(datetime.fromisoformat(span[key].replace("Z", "+00:00")).timestamp() * 1e9)
                      for key in ("start_time", "end_time"))  # fmt: skip
        spans.append(Span(
            service=span["resource"]["attributes"].get("service.name", ""), name=span["name"],
            trace_id=span["context"]["trace_id"].removeprefix("0x"),
            span_id=span["context"]["span_id"].removeprefix("0x"),
            parent_id=(span["parent_id"] or "").removeprefix("0x") or None, kind=0, start_ns=start, end_ns=end,
            transport="console",
        ))  # fmt: skip
    return spans


def _ancestors(span: Span, by_id: dict[str, Span]) -> list[str]:
    names = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        names.append(span.name)
    return names


def _one_edit(settings, tmp_path: Path, **api_env: str) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """One edit with a `completed` webhook through a real worker (started with this process's environment) and a
    real API (that environment plus `api_env`); the submit carries a client's `traceparent`. The finished edit
    resource, its webhook message, the API's and the worker's output."""
    worker = WorkerProcess(settings, tmp_path / "worker.log", beat=False).start()
    try:
        with ApiProcess(settings, tmp_path / "api.log", OTEL_SERVICE_NAME="faceedit-api", **api_env) as api, \
                Receiver() as hook:  # fmt: skip
            from api.keys import create_key
            from common.db import make_engine, make_session_factory

            with make_session_factory(make_engine(settings.database_url))() as session:
                _, key = create_key(session, "tracing")
            client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            image = client.post("/v1/images", files={"file": ("face.jpg", face_jpeg(), "image/jpeg")}).json()
            created = client.post("/v1/edits", headers={"traceparent": CLIENT_TRACEPARENT}, json={
                "image": image["id"], "neutral": "a face", "target": "a smiling face", "alphas": [0, 2],
                "beta": 0.1, "webhook": hook.url, "webhook_events_filter": ["completed"],
            })  # fmt: skip
            assert created.status_code == 201, created.text
            edit = wait_for_edit(client, created.json()["id"])
            assert edit["status"] == "succeeded", edit
            assert created.json()["trace_id"] == edit["trace_id"]
            hook.wait_for_request()
            time.sleep(1)  # the delivery task's span ends after the POST
            api_log = api.log()
    finally:
        worker.stop()
    return edit, json.loads(hook.requests[0].body), api_log, worker.log()


def _check_one_trace(spans: list[Span], edit: dict[str, Any], message: dict[str, Any]) -> list[Span]:
    """The edit's trace among `spans`, checked: connected from the submit to the webhook delivery, the stages
    in order within the job's time; the resource and its webhook message name it. Its spans, by start."""
    submit = next(s for s in spans if s.name == "POST /v1/edits")
    trace_id = submit.trace_id
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != CLIENT_TRACE_ID, "a trace of the server's own"
    assert edit["trace_id"] == trace_id and message["data"]["trace_id"] == trace_id
    ordered = sorted((s for s in spans if s.trace_id == trace_id), key=lambda s: s.start_ns)
    by_id = {s.span_id: s for s in ordered}
    names = [s.name for s in ordered]
    print("trace", trace_id, ":", [(s.service, s.name, round(s.seconds, 3)) for s in ordered])

    produce = next(s for s in ordered if s.name == f"apply_async/{PROCESS_EDIT.name}")
    run = next(s for s in ordered if s.name == f"run/{PROCESS_EDIT.name}")
    assert "POST /v1/edits" in _ancestors(produce, by_id)
    assert run.parent_id == produce.span_id, "the job continues the submit's trace"
    stages = [s for s in ordered if s.name in STAGES]
    assert {s.name for s in stages} == set(STAGES), names
    for stage in stages:
        assert f"run/{PROCESS_EDIT.name}" in _ancestors(stage, by_id), stage.name
    first = {name: names.index(name) for name in ("align", "invert", "direction", "synthesize")}
    assert first["align"] < first["invert"] < first["direction"] < first["synthesize"], names
    # A span per strength; the first one's is two where the worker made a preview (before it and after it).
    previewed = "first_preview_seconds" in edit["metrics"]
    assert sum(1 for s in stages if s.name == "synthesize") == len(edit["input"]["alphas"]) + previewed, names
    assert sum(s.seconds for s in stages) <= run.seconds + 0.01
    assert run.seconds <= edit["metrics"]["total_seconds"] + 1.0
    deliveries = [s for s in ordered if s.name.startswith("run/") and s is not run]
    assert deliveries, f"the webhook delivery is not in the trace: {names}"
    posts = [s for s in ordered if s.name == "POST webhook"]  # its HTTP POST, a client span of its own
    assert posts and all(by_id[s.parent_id].name.startswith("run/worker.webhooks") for s in posts), names
    assert any(s.name.startswith(("SELECT", "INSERT", "UPDATE", "postgresql")) for s in ordered), "no SQL spans"
    return ordered


def test_one_edit_is_one_connected_trace(pg_url, redis_url, s3_endpoint, dev_bundle, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # both processes' environment (settings_env copies it)
    settings = service_settings(
        pg_url, redis_url, s3_endpoint, model_dir=dev_bundle, log_format="json",
        webhook_allow_networks="127.0.0.0/8", webhook_allow_ports="1024-65535",
    )  # fmt: skip
    edit, message, api_log, worker_log = _one_edit(settings, tmp_path)
    ordered = _check_one_trace(_printed_spans(api_log) + _printed_spans(worker_log), edit, message)
    assert ordered[0].name == "POST /v1/edits" and ordered[0].parent_id is None, "a client's trace not continued"

    lines = [json.loads(line) for line in worker_log.splitlines() if line.startswith('{"time"')]
    job_lines = [line for line in lines if line.get("edit_id") == edit["id"]]
    assert job_lines and all(line.get("trace_id") == edit["trace_id"] for line in job_lines), job_lines


@pytest.mark.parametrize("api_protocol, worker_protocol", [("grpc", "http/protobuf"), ("http/protobuf", "grpc")])
def test_otlp_exporters_send_the_trace(api_protocol, worker_protocol, pg_url, redis_url, s3_endpoint, dev_bundle,
                                       tmp_path: Path, monkeypatch):  # fmt: skip
    """`OTEL_TRACES_EXPORTER=otlp` as `OTEL_EXPORTER_OTLP_PROTOCOL` says: the API and the worker each export
    the edit's spans to a real receiver, over gRPC or HTTP/protobuf (both transports in both processes over
    the two runs), batched as deployed (the batch processor, its delay shortened)."""
    settings = service_settings(pg_url, redis_url, s3_endpoint, model_dir=dev_bundle,
                                webhook_allow_networks="127.0.0.0/8", webhook_allow_ports="1024-65535")
    with OtlpReceiver(tmp_path / "spans.jsonl") as otlp:
        endpoint = {"grpc": otlp.grpc_endpoint, "http/protobuf": otlp.http_endpoint}
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # ms; a batch goes out within the test's patience
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", worker_protocol)  # the worker's environment
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint[worker_protocol])
        edit, message, _, _ = _one_edit(settings, tmp_path, OTEL_EXPORTER_OTLP_PROTOCOL=api_protocol,
                                        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint[api_protocol])
        spans = otlp.wait_for(lambda spans: {"POST /v1/edits", f"run/{PROCESS_EDIT.name}", *STAGES}
                              <= {s.name for s in spans if s.trace_id == edit["trace_id"]})
        spans = otlp.wait_for(lambda spans: sum(s.name.startswith("run/") for s in spans
                                                if s.trace_id == edit["trace_id"]) >= 2)  # and the delivery
    ordered = _check_one_trace(spans, edit, message)
    assert ordered[0].name == "POST /v1/edits" and ordered[0].parent_id is None, "a client's trace not continued"
    transports = {s.service: {t.transport for t in ordered if t.service == s.service} for s in ordered}
    assert transports == {"faceedit-api": {api_protocol}, "faceedit-worker": {worker_protocol}}, transports


def test_one_process_traces_into_the_sdks_in_memory_exporter(pg_url, redis_url, s3_endpoint, dev_bundle,
                                                             tmp_path: Path):  # fmt: skip
    """The API app and a real Celery worker (on a thread) in one process, sharing one `InMemorySpanExporter`
    (tests/worker/in_memory_trace.py, a process of its own: tracing is process-wide): one connected trace,
    the stages as spans in order, their durations within the job's and within the edit's wall time."""
    settings = service_settings(pg_url, redis_url, s3_endpoint, model_dir=dev_bundle,
                                webhook_allow_networks="127.0.0.0/8", webhook_allow_ports="1024-65535")
    env = {name: value for name, value in settings_env(settings).items() if not name.startswith("OTEL_")}
    out = tmp_path / "trace.json"
    done = subprocess.run([sys.executable, "-m", "tests.worker.in_memory_trace", str(out)], cwd=REPO_ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=480)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads(out.read_text())
    assert result["edit"]["status"] == "succeeded", result["edit"]
    # In one process the TestClient's own request span (httpx, instrumented too) is the submit's parent.
    ordered = _check_one_trace([Span(**span) for span in result["spans"]], result["edit"], result["message"])
    assert ordered[0].name == "POST" and ordered[1].name == "POST /v1/edits", [s.name for s in ordered[:2]]
    stages = [s for s in ordered if s.name in STAGES]
    assert sum(s.seconds for s in stages) <= result["wall_seconds"]


def test_off_by_default_no_span(pg_url, redis_url, s3_endpoint, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    settings = service_settings(pg_url, redis_url, s3_endpoint)
    with ApiProcess(settings, tmp_path / "api.log") as api:
        assert httpx.get(f"{api.url}/v1/edits/ed_missing", timeout=10).status_code in (401, 404)
        assert not _printed_spans(api.log())
