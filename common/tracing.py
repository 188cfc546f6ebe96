"""OpenTelemetry tracing: one trace per edit, from `POST /v1/edits` through the queue to each stage and webhook.

Off by default, at no cost: only the OpenTelemetry API is loaded (no-op spans). It is on when the standard
variables ask for it: `OTEL_TRACES_EXPORTER=otlp` (the transport from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
`OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf`, the default; endpoint and headers from the other
`OTEL_EXPORTER_OTLP_*` variables, read by the exporter) or `console`; `OTEL_SERVICE_NAME` names the process;
`OTEL_SDK_DISABLED=true` wins. The maintained instrumentations do the spans of FastAPI, Celery (the context
travels in the task headers), SQLAlchemy, Redis, botocore (S3) and httpx (webhooks); the pipeline's stages are
spans of their own (pipeline/edit/stages.py), and the hand-written edit sender injects the context itself
(`publishing`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace

_configured = False


def _exporter_names() -> list[str]:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")
    return [name.strip() for name in names if name.strip() and name.strip() != "none"]


def _exporter(name: str):
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this service knows otlp, console and none")
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")  # fmt: skip
    package = {"grpc": "grpc", "http/protobuf": "http"}.get(protocol)
    if package is None:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: grpc or http/protobuf")
    try:
        module = __import__(f"opentelemetry.exporter.otlp.proto.{package}.trace_exporter", fromlist=["x"])
    except ImportError as error:
        raise RuntimeError(
            f"OTEL_TRACES_EXPORTER=otlp over {protocol} needs the package "
            f"opentelemetry-exporter-otlp-proto-{package}, which is not installed"
        ) from error
    return module.OTLPSpanExporter()


def enabled() -> bool:
    """True once `configure_tracing` set up the SDK in this process."""
    return _configured


def configure_tracing(service_name: str, exporter: Any = None) -> bool:
    """Set up the SDK and the library instrumentations once per process, when the environment asks for it (or
    with `exporter`, exported span by span: tests pass an in-memory one). True when tracing is on."""
    global _configured
    if _configured:
        return True
    names = _exporter_names()
    if exporter is None and not names:
        return False
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for exporter_name in names:
        # console: span by span, so a short-lived process (a test's worker) loses none at exit
        processor = SimpleSpanProcessor if exporter_name == "console" else BatchSpanProcessor
        provider.add_span_processor(processor(_exporter(exporter_name)))
    trace.set_tracer_provider(provider)
    for instrumentor in (CeleryInstrumentor(), RedisInstrumentor(), BotocoreInstrumentor(), HTTPXClientInstrumentor()):
        instrumentor.instrument()
    # Its declared range stops below SQLAlchemy 2.1 (which we run); the hooks it uses are unchanged in 2.1, and
    # tests/worker/test_tracing.py checks that SQL spans arrive.
    SQLAlchemyInstrumentor().instrument(skip_dep_check=True)
    _configured = True
    return True


# W3C Trace Context and Baggage: what a propagator reads from a request (lower case, as ASGI gives them).
_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


def instrument_app(app: Any) -> None:
    """FastAPI's server spans (probes and /metrics left out: they would be most of the traces). The API is the
    edge: each request starts a trace of its own, whatever context headers a client sends, so an edit's trace
    id (on the edit resource) is one no client chose, never shared by two edits, and a client cannot force
    sampling or attach its spans to another trace."""
    if not _configured:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
    build_stack = app.build_middleware_stack

    def build_without_client_context() -> Any:
        inner = build_stack()

        async def edge(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                headers = [(name, value) for name, value in scope["headers"] if name not in _CONTEXT_HEADERS]
                scope = {**scope, "headers": headers}
            await inner(scope, receive, send)

        return edge

    app.build_middleware_stack = build_without_client_context


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), or None outside a recorded span."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


@contextmanager
def publishing(task_name: str, task_id: str, headers: dict[str, Any]) -> Iterator[None]:
    """A producer span for a task message sent without Celery's publish (common/edit_sender.py), its context
    injected into the message headers as Celery's instrumentation does, so the worker's span continues it."""
    tracer = trace.get_tracer("faceedit")
    with tracer.start_as_current_span(f"apply_async/{task_name}", kind=trace.SpanKind.PRODUCER,
                                      attributes={"celery.task_name": task_name, "messaging.message.id": task_id}):
        propagate.inject(headers)
        yield


@contextmanager
def webhook_post(url: str) -> Iterator[Any]:
    """A client span for one webhook POST: the delivery sends through httpcore itself (common/netguard.py, which
    pins the checked address), so httpx's instrumentation never sees it. Only the host and port are recorded:
    a receiver's path or query may hold its own secret. The caller sets the answer's status (`answered`)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    attributes = {"http.request.method": "POST", "server.address": parts.hostname or ""}
    if parts.port:
        attributes["server.port"] = parts.port
    with trace.get_tracer("faceedit").start_as_current_span("POST webhook", kind=trace.SpanKind.CLIENT,
                                                            attributes=attributes) as span:  # fmt: skip
        yield span


def answered(span: Any, status_code: int) -> None:
    """Record a webhook receiver's HTTP status on its `webhook_post` span (an error status from 500 up)."""
    span.set_attribute("http.response.status_code", status_code)
    if status_code >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
