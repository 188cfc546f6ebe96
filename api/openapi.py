"""The OpenAPI document as client generators read it: short stable operation ids and the bearer scheme.

Operation ids become the function and module names of generated clients (`create_edit`, `createEdit`),
so they are part of the API: FastAPI's defaults (`create_edit_v1_edits_post`) change with the path and
method. Ours are the camelCase of each route function's name, derived in one place here rather than
written on every route; `tests/api/test_openapi.py` pins them to the list in docs/API.md, so renaming a
route function is a visible change to the API, not a silent one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

BEARER = "bearerAuth"


def operation_id(route: APIRoute) -> str:
    """`create_edit` → `createEdit`: the route function's name in camelCase."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def install_openapi(app: FastAPI) -> None:
    """Declare the bearer key on every `/v1` operation (the key check is a middleware, api.auth, which
    FastAPI cannot see), so generators and /docs offer to send it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})[BEARER] = {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: `python -m api keys create`, or the key `make run` prints.",
            }
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{BEARER: []}]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def binary_content(media_types: Iterable[str]) -> dict[str, Any]:
    """The OpenAPI ``content`` of raw file bytes in any of ``media_types``: generators then type the body or
    response as bytes instead of JSON (routes that read or write bytes themselves declare it with this). One
    entry per operation, a range such as ``image/*`` where several types come back: openapi-python-client
    drops a response that lists several."""
    return {"content": {media_type: {"schema": {"type": "string", "format": "binary"}}
                        for media_type in sorted(set(media_types))}}
