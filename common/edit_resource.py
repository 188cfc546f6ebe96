"""The edit resource: the one serialization of an edit row, for `GET /v1/edits/{id}` and for the `data` of its
webhook messages, so both carry the same fields (docs/ARCHITECTURE.md, "Edit resource").

No FastAPI here: the API passes its base URL, the edit's queue position (computed for a whole page in one
query) and, for storage that hands out presigned URLs, a `presign` function; the webhook passes the configured
public base URL and links to the authenticated output route (outputs need the API key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.edit_cost import Estimate
from common.image_formats import media_type_of_key
from common.lifecycle import EditStatus
from common.models import Edit

# (storage key, media type) → a presigned URL, or None where the storage has none (local folder).
Presign = Callable[[str, str | None], str | None]


def edit_url(base_url: str, edit_id: str) -> str:
    """`{base}/v1/edits/{id}`; an empty base gives the path alone."""
    return f"{base_url.rstrip('/')}/v1/edits/{edit_id}"


def _outputs(edit: Edit, get: str, presign: Presign | None) -> list[str | None] | None:
    """One URL per alpha as each strength finishes (null for those not done); kept when canceled between
    strengths; none when failed (the job deletes them)."""
    if edit.status in (EditStatus.STARTING, EditStatus.FAILED) or not edit.output_keys:
        return None
    urls: list[str | None] = []
    for index, key in enumerate(edit.output_keys):
        if key is None:
            urls.append(None)
            continue
        presigned = presign(key, media_type_of_key(key)) if presign is not None else None
        urls.append(presigned or f"{get}/outputs/{index}")
    return urls


def current_preview(edit: Edit) -> dict[str, Any] | None:
    """The row's preview while it stands in for a strength not rendered yet: `{key, index, width, height}`
    while processing and before output `index` lands; None otherwise (replaced, or the edit ended: a canceled
    or failed job deletes it, a finished one replaced it)."""
    preview = edit.preview
    if edit.status != EditStatus.PROCESSING or not isinstance(preview, dict):
        return None
    keys = edit.output_keys or []
    index = preview.get("index")
    if not isinstance(index, int) or not isinstance(preview.get("key"), str) or (index < len(keys) and keys[index]):
        return None
    return preview


def _preview(edit: Edit, get: str, presign: Presign | None) -> dict[str, Any] | None:
    """The preview as the resource shows it: which output it stands in for, its URL and size."""
    preview = current_preview(edit)
    if preview is None:
        return None
    presigned = presign(preview["key"], media_type_of_key(preview["key"])) if presign is not None else None
    return {"index": preview["index"], "url": presigned or f"{get}/preview", "width": preview.get("width"),
            "height": preview.get("height")}


def edit_input(edit: Edit) -> dict[str, Any]:
    """The edit's parameters (the contract's fields), with `neutral`/`target` set for an edit of one change of
    weight 1 (what the one-change form asks for)."""
    spec = edit.spec
    one = spec.one_change()
    return {"image": edit.image_id, "neutral": one.neutral if one else None, "target": one.target if one else None,
            **spec.model_dump(mode="json")}


def edit_resource(
    edit: Edit, base_url: str, queue: Estimate | None, presign: Presign | None = None
) -> dict[str, Any]:
    """The public resource of an edit row (datetimes as `datetime`; the caller encodes them). `queue`: its place
    in the queue while `starting` (`lifecycle.queue_positions`, or what `admit` counted)."""
    starting = edit.status == EditStatus.STARTING and queue is not None
    metrics = dict(edit.metrics or {})
    if edit.started_at and "queue_seconds" not in metrics:
        metrics["queue_seconds"] = round((edit.started_at - edit.created_at).total_seconds(), 3)
    get = edit_url(base_url, edit.id)
    resource = {
        "id": edit.id,
        "status": edit.status,
        "input": edit_input(edit),
        "output": _outputs(edit, get, presign),
        "preview": _preview(edit, get, presign),
        "error": {"code": edit.error_code, "message": edit.error_message or ""} if edit.error_code else None,
        "metrics": metrics,
        "model": edit.model,
        "progress": edit.progress if edit.status == EditStatus.PROCESSING else None,
        "queue_position": queue.position if starting else None,
        "estimate": {"cost_seconds": edit.cost_seconds, "queue_seconds": queue.ahead_seconds if starting else None},
        "webhook": edit.webhook,
        "webhook_events_filter": edit.webhook_events_filter,
        "created_at": edit.created_at,
        "started_at": edit.started_at,
        "completed_at": edit.completed_at,
        "urls": {"get": get, "cancel": f"{get}/cancel"},
        "trace_id": edit.trace_id,
    }
    if edit.likeness is not None and edit.status != EditStatus.FAILED:
        resource["likeness"] = list(edit.likeness)  # absent without an identity model (docs/API.md)
    return resource
