"""The FastAPI application factory (`uvicorn --factory api.main:create_app`).

Every error leaves as `{"code", "message"}`: our ApiErrors, FastAPI's validation errors, Starlette's
404/405, and unexpected exceptions (500 `internal_error`, no stack trace in the body).

A request passes these layers, outermost first, and each may answer before the next runs:

    metrics → security headers → client address (X-Forwarded-For from FORWARDED_ALLOW_IPS only)
    → key check (api.auth: headers only, 401 charged to the address) → per-key rate limits (429)
    → body limit (64 KiB unless the route takes a photo: 413) → Idempotency-Key → the route

so nothing reads a body before the caller is known and within its limits (docs/SECURITY.md).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api.auth import AuthGate
from api.body_limit import BodySizeLimit
from api.idempotency import IdempotencyMiddleware
from api.openapi import install_openapi, operation_id
from api.photo_check import enable_heif
from api.rate_limit import RateLimitMiddleware, RateLimits
from api.routes import app_config, docs, edits, health, images, me, metrics, uploads, webhooks
from api.security_headers import SecurityHeaders
from common import tracing
from common.db import make_engine, make_session_factory
from common.edit_sender import EditSender
from common.errors import ApiError
from common.logging import configure_logging
from common.metrics import HttpMetricsMiddleware
from common.queue import make_celery
from common.ratelimit import RateLimiter
from common.redis_client import redis_client
from common.settings import Settings, get_settings
from common.storage import make_storage
from common.worker_offers import OffersReader

log = logging.getLogger("api")

_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}
# Multipart framing around the photo itself.
_MULTIPART_OVERHEAD = 1024 * 1024


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        if item.get("type") == "json_invalid":
            return "the body is not valid JSON"
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, "validation_error", _validation_message(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_STATUS.get(error.status_code, "http_error")
        return _error(error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, _exc: DataError) -> JSONResponse:
        # The client's data, not our bug: e.g. a NUL character, which PostgreSQL cannot store in text.
        return _error(422, "validation_error", "a value cannot be stored (a NUL character, or out of range)")

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, error: OperationalError) -> JSONResponse:
        log.warning("database unreachable on %s %s: %s", request.method, request.url.path, type(error.orig).__name__)
        return _error(503, "service_unavailable", "the database is unreachable; retry shortly", {"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal error; it was logged")


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    freeze_startup_heap()
    yield


def freeze_startup_heap() -> None:
    """Once per process, when the first app starts: take what exists by then (modules, routes, the ORM's
    mappings, ~140k objects) out of the garbage collector's sight. Otherwise each full collection walks them
    all, a ~100 ms pause of every request in flight, every few seconds under load: most of the submit's p99
    (docs/BENCHMARKS.md, "API under load"). Objects made later are collected as before."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API with its own engine, storage and Celery client (nothing global, tests build many)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    tracing.configure_tracing("faceedit-api")  # off unless OTEL_TRACES_EXPORTER asks (common/tracing.py)
    enable_heif()
    app = FastAPI(
        title="faceedit",
        version="1",
        description="Text-driven face editing (StyleCLIP global directions) as an asynchronous job API.",
        docs_url=None,  # api.routes.docs serves it without a CDN
        redoc_url=None,
        generate_unique_id_function=operation_id,  # createEdit, not create_edit_v1_edits_post (api.openapi)
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings.database_url)
    app.state.session_factory = make_session_factory(app.state.engine)
    app.state.storage = make_storage(settings)
    app.state.celery = make_celery(settings, name="faceedit-api")
    app.state.edit_sender = EditSender(app.state.celery, settings)  # no connection until the first submit
    # what the live edit workers' models offer (SFE or not): read from Redis, cached a moment per process
    app.state.worker_offers = (OffersReader(redis_client(settings.redis_url), settings.edits_queue)
                               if settings.redis_url else None)

    install_error_handlers(app)
    # Added innermost first: each add_middleware wraps the ones before it (the order is in the docstring).
    app.add_middleware(IdempotencyMiddleware, ttl_hours=settings.idempotency_ttl_hours)
    app.add_middleware(BodySizeLimit, json_max_bytes=settings.max_json_body_bytes,
                       photo_max_bytes=settings.max_upload_bytes + _MULTIPART_OVERHEAD)
    limiter = RateLimiter.from_url(settings.redis_url) if settings.redis_url else None
    app.add_middleware(RateLimitMiddleware, limiter=limiter, limits=RateLimits.from_settings(settings))
    app.add_middleware(AuthGate, settings=settings, session_factory=app.state.session_factory, limiter=limiter)
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    app.add_middleware(SecurityHeaders)
    # Outermost, so the latency covers the other middlewares and errors they turn into responses.
    app.add_middleware(HttpMetricsMiddleware)

    for module in (health, metrics, app_config, docs, images, uploads, edits, webhooks, me):
        app.include_router(module.router)
    tracing.instrument_app(app)
    docs.mount_assets(app)
    install_openapi(app)
    if settings.web_dir.is_dir():
        # Last, so API routes win; unknown paths still get the JSON 404 through the handler above.
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")
    return app
