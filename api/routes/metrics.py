"""`GET /metrics`: the API's Prometheus metrics (request counts and latency by route and status).

Unauthenticated like `/healthz`, for the in-cluster scraper; do not route it through a public Ingress.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from common.metrics import metrics_payload

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    body, content_type = metrics_payload()
    return Response(body, media_type=content_type)
