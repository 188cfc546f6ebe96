"""Prometheus metrics of the API and the workers, and the two ways they are served.

The API serves them on its own port at `/metrics` (`metrics_payload`); a worker has no HTTP server, so
`start_exporter` runs prometheus_client's small one in the worker's main process on METRICS_PORT.
When `PROMETHEUS_MULTIPROC_DIR` is set (uvicorn with several workers, Celery prefork children),
prometheus_client keeps values in per-process files and both readers aggregate them.

Labels stay low-cardinality on purpose: the route *template* (`/v1/edits/{edit_id}`), never the
path; a stable error code, never a message.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.registry import Collector

from common.lifecycle import EditStatus

# Edits take from a fraction of a second (cached inversion, small output) to minutes (optimize mode
# on CPU); the buckets cover that range with about two per decade.
_JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 600, 1800)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_REQUESTS = Counter(
    "faceedit_http_requests", "HTTP requests answered by the API.", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "faceedit_http_request_duration_seconds",
    "Time from request to the end of the response body, by route template.",
    ["method", "route", "status"],
    buckets=_HTTP_BUCKETS,
)
JOB_STAGE_SECONDS = Histogram(
    "faceedit_job_stage_seconds",
    "Seconds an edit spent in each stage (align, invert, direction, synthesize, paste, optimize, store;"
    " `total` = the whole job on the worker).",
    ["stage"],
    buckets=_JOB_BUCKETS,
)
JOB_QUEUE_WAIT = Histogram(
    "faceedit_job_queue_wait_seconds",
    "Seconds from submission until a worker started the edit.",
    buckets=_JOB_BUCKETS,
)
JOBS = Counter("faceedit_jobs", "Edits finished by a worker, by outcome.", ["outcome"])
JOB_FAILURES = Counter("faceedit_job_failures", "Failed edits by stable error code.", ["code"])
INVERSION_CACHE = Counter(
    "faceedit_inversion_cache", "Inversion cache lookups by the worker.", ["result"]
)
JOBS_IN_PROGRESS = Gauge(
    "faceedit_jobs_in_progress", "Edits being processed right now.", multiprocess_mode="livesum"
)
GPU_MEMORY = Gauge(
    "faceedit_gpu_memory_bytes",
    "CUDA memory of the worker process: allocated, reserved and peak allocated since start.",
    ["device", "kind"],
    multiprocess_mode="liveall",
)

# What the API finds at scrape time (api/routes/metrics.py): the state the alerts in infra/monitoring watch
# when nothing is flowing (a dead worker observes no queue wait; an unreachable database fails no edit).
RENDER_BATCH_FACES = Histogram(
    "faceedit_render_batch_faces",
    "Faces in each render of a model worker running several jobs at once (their strengths share renders, at most"
    " EDIT_BATCH_MAX): near 1, the jobs rarely meet within EDIT_BATCH_WAIT_MS; near EDIT_BATCH_MAX, renders are full.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
RENDER_BATCH_RETRIES = Counter(
    "faceedit_render_batch_retries",
    "Shared renders that failed and were run again one job at a time (so only the failing job's edit fails).",
)
DEPENDENCY_UP = Gauge(
    "faceedit_dependency_up",
    "1 when the API reached the dependency (database, broker, storage) at the last scrape, else 0.",
    ["dependency"],
    multiprocess_mode="mostrecent",
)
EDITS_WAITING = Gauge(
    "faceedit_edits_waiting",
    "Edits accepted and not yet started by a worker (status `starting`), at the last scrape.",
    multiprocess_mode="mostrecent",
)
OLDEST_WAITING = Gauge(
    "faceedit_edits_oldest_waiting_seconds",
    "Age of the oldest edit not yet started by a worker at the last scrape; 0 when none waits.",
    multiprocess_mode="mostrecent",
)
WEBHOOK_ATTEMPTS = Counter(
    "faceedit_webhook_attempts",
    "Webhook delivery attempts by what the delivery became: delivered, retrying (it will be tried again),"
    " failed (attempts used up), disabled (410 Gone), refused (the URL guard).",
    ["outcome"],
)

# Keys of an edit's `metrics` object that are not pipeline stages although they end in `_seconds`.
_NOT_STAGES = {"queue_seconds"}

def multiprocess_enabled() -> bool:
    """True when prometheus_client stores values in files shared by several processes."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def registry() -> CollectorRegistry:
    """The registry to read from: this process's, or the aggregate of all processes' files."""
    if not multiprocess_enabled():
        return REGISTRY
    aggregate = CollectorRegistry()
    _multiprocess.MultiProcessCollector(aggregate)
    return aggregate


def metrics_payload() -> tuple[bytes, str]:
    """The text exposition for a `/metrics` route: (body, content type)."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def start_exporter(port: int, addr: str, collectors: Iterable[Collector] = ()) -> None:
    """Serve `/metrics` on `addr`:`port` from a daemon thread of this process (the worker's main process);
    `collectors` are read at each scrape beside the metrics above (the worker's heartbeat: worker/liveness.py)."""
    served = registry()
    for collector in collectors:
        served.register(collector)
    start_http_server(port, addr=addr, registry=served)


def observe_edit(
    metrics: Mapping[str, Any], outcome: EditStatus, error_code: str | None = None
) -> None:
    """Record one finished edit from its resource's `metrics` object (see docs/ARCHITECTURE.md).

    Missing or null timings are skipped: a canceled edit may never have reached `synthesize`.
    """
    for key, value in metrics.items():
        if key.endswith("_seconds") and key not in _NOT_STAGES and _is_duration(value):
            JOB_STAGE_SECONDS.labels(stage=key.removesuffix("_seconds")).observe(value)
    if _is_duration(metrics.get("queue_seconds")):
        JOB_QUEUE_WAIT.observe(metrics["queue_seconds"])
    cached = metrics.get("inversion_cached")
    if isinstance(cached, bool):
        INVERSION_CACHE.labels(result="hit" if cached else "miss").inc()
    JOBS.labels(outcome=outcome).inc()
    if outcome == EditStatus.FAILED:
        JOB_FAILURES.labels(code=error_code or "internal").inc()


def _is_duration(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def observe_render_batch(faces: int, retried: bool) -> None:
    """One shared render of a model worker's batcher (`Editor(on_render_batch=)`)."""
    RENDER_BATCH_FACES.observe(faces)
    if retried:
        RENDER_BATCH_RETRIES.inc()


def record_gpu_memory() -> None:
    """Sample CUDA memory of this process, if this process has already initialised CUDA.

    `common` never imports torch (the API image has none); a worker has it loaded by the time a job
    ran, so it is read from `sys.modules` rather than imported.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        GPU_MEMORY.labels(device=device, kind="allocated").set(torch.cuda.memory_allocated(index))
        GPU_MEMORY.labels(device=device, kind="reserved").set(torch.cuda.memory_reserved(index))
        GPU_MEMORY.labels(device=device, kind="peak_allocated").set(torch.cuda.max_memory_allocated(index))


def route_label(scope: Mapping[str, Any]) -> str:
    """The route template Starlette matched for this request, or `unmatched` (404s, scanners)."""
    route = scope.get("route")
    if route is None:
        return "unmatched"
    path = getattr(route, "path_format", None) or getattr(route, "path", "")
    if route.__class__.__name__ == "Mount":  # static files: one label for the whole mount
        return (path or "") + "/*"
    return path or "unmatched"


class HttpMetricsMiddleware:
    """Pure ASGI middleware: request count and latency by method, route template and status.

    Pure ASGI rather than `BaseHTTPMiddleware` so streaming responses are timed to their last byte
    and nothing is buffered. An exception escaping the app counts as a 500.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            labels = {"method": scope["method"], "route": route_label(scope), "status": str(status)}
            HTTP_REQUESTS.labels(**labels).inc()
            HTTP_LATENCY.labels(**labels).observe(time.perf_counter() - started)
