"""Metric helpers: route templates as labels, stage timings from an edit's metrics, the exporter."""

from __future__ import annotations

import socket
import urllib.request

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from common import metrics
from common.lifecycle import EditStatus


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_http_middleware_labels_by_route_template_and_status() -> None:
    app = FastAPI()
    app.add_middleware(metrics.HttpMetricsMiddleware)

    @app.get("/t/items/{item_id}")
    def item(item_id: str) -> dict:
        if item_id == "boom":
            raise RuntimeError("boom")
        return {"id": item_id}

    before_ok = _value("faceedit_http_requests_total", method="GET", route="/t/items/{item_id}", status="200")
    before_err = _value("faceedit_http_requests_total", method="GET", route="/t/items/{item_id}", status="500")
    before_404 = _value("faceedit_http_requests_total", method="GET", route="unmatched", status="404")
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/t/items/1").status_code == 200
    assert client.get("/t/items/2").status_code == 200
    assert client.get("/t/items/boom").status_code == 500
    assert client.get("/no/such/path").status_code == 404
    assert _value("faceedit_http_requests_total", method="GET", route="/t/items/{item_id}", status="200") == before_ok + 2
    assert _value("faceedit_http_requests_total", method="GET", route="/t/items/{item_id}", status="500") == before_err + 1
    assert _value("faceedit_http_requests_total", method="GET", route="unmatched", status="404") == before_404 + 1
    assert _value("faceedit_http_request_duration_seconds_count", method="GET",
                  route="/t/items/{item_id}", status="200") >= 2


def test_observe_edit_records_stages_queue_wait_and_failure_code() -> None:
    before = _value("faceedit_job_stage_seconds_count", stage="invert")
    before_fail = _value("faceedit_job_failures_total", code="no_face")
    before_hit = _value("faceedit_inversion_cache_total", result="hit")
    metrics.observe_edit(
        {"queue_seconds": 1.5, "align_seconds": 0.2, "invert_seconds": 3.0, "direction_seconds": None,
         "total_seconds": 4.0, "inversion_cached": True},
        outcome=EditStatus.FAILED, error_code="no_face",
    )
    assert _value("faceedit_job_stage_seconds_count", stage="invert") == before + 1
    assert _value("faceedit_job_failures_total", code="no_face") == before_fail + 1
    assert _value("faceedit_inversion_cache_total", result="hit") == before_hit + 1
    body, content_type = metrics.metrics_payload()
    assert content_type.startswith("text/plain")
    assert b'faceedit_job_stage_seconds_bucket{le="5.0",stage="invert"}' in body


def test_a_shared_render_is_counted_by_its_faces_and_a_retry_apart() -> None:
    count, total = _value("faceedit_render_batch_faces_count"), _value("faceedit_render_batch_faces_sum")
    retries = _value("faceedit_render_batch_retries_total")
    metrics.observe_render_batch(5, retried=False)
    metrics.observe_render_batch(2, retried=True)
    assert _value("faceedit_render_batch_faces_count") == count + 2
    assert _value("faceedit_render_batch_faces_sum") == total + 7
    assert _value("faceedit_render_batch_faces_bucket", le="4.0") >= 1
    assert _value("faceedit_render_batch_retries_total") == retries + 1


def test_exporter_serves_metrics_over_http() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.start_exporter(port, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert "faceedit_job_queue_wait_seconds_bucket" in body
    assert "faceedit_jobs_in_progress" in body


def test_gpu_memory_is_skipped_without_torch(monkeypatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    before = REGISTRY.get_sample_value("faceedit_gpu_memory_bytes", {"device": "cuda:0", "kind": "allocated"})
    metrics.record_gpu_memory()  # the API process: torch never imported, nothing is read
    assert "torch" not in sys.modules
    assert REGISTRY.get_sample_value("faceedit_gpu_memory_bytes", {"device": "cuda:0", "kind": "allocated"}) == before


def test_gpu_memory_read_from_an_initialised_cuda(monkeypatch) -> None:
    """No GPU here: a stand-in for torch's CUDA memory API checks the sampling and the labels."""
    import sys
    import types

    cuda = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True, device_count=lambda: 2,
        memory_allocated=lambda i: 1000 + i, memory_reserved=lambda i: 2000 + i,
        max_memory_allocated=lambda i: 3000 + i,
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    metrics.record_gpu_memory()
    get = REGISTRY.get_sample_value
    assert get("faceedit_gpu_memory_bytes", {"device": "cuda:1", "kind": "allocated"}) == 1001
    assert get("faceedit_gpu_memory_bytes", {"device": "cuda:0", "kind": "reserved"}) == 2000
    assert get("faceedit_gpu_memory_bytes", {"device": "cuda:1", "kind": "peak_allocated"}) == 3001
