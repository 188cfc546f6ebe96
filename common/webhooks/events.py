"""Which webhook events an edit has produced, and the message body of each.

Events are derived from the edit row itself (`started_at` set → `start`; the first strength's preview
while it stands in for that output → `preview`, keyed by the output's index; each finished output → one
`output`, keyed by its index, as Replicate sends them; terminal → `completed`), so whatever changed the
row (the worker, the API's cancel, the reaper) the events follow from the state. `preview` is sent only to
subscribers that ask for it in `webhook_events_filter` (an event type receivers written before it never saw),
and not at all when the full-size output landed before the event was recorded. A failed edit sends no
`output` (its outputs are deleted); a canceled one sends those it kept. `logs` is accepted in a filter for Replicate compatibility and never sent
(progress is in the edit resource).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from common.edit_resource import current_preview, edit_resource
from common.lifecycle import TERMINAL, EditStatus
from common.models import Edit

EVENTS = ("start", "preview", "output", "completed")
DEFAULT_EVENTS = ("start", "output", "completed")  # without a filter: every event but the opt-in `preview`


def normalize_filter(events: Iterable[str] | None) -> tuple[str, ...]:
    """The events a subscriber gets: DEFAULT_EVENTS when no filter was given."""
    if events is None:
        return DEFAULT_EVENTS
    chosen = set(events)
    unknown = chosen - set(EVENTS)
    if unknown:
        raise ValueError(f"unknown webhook events {sorted(unknown)}; allowed: {list(EVENTS)}")
    return tuple(e for e in EVENTS if e in chosen)


def due_events(edit: Edit) -> list[tuple[str, int]]:
    """The (event, output index) pairs the edit's current state has produced, in order, limited by its filter
    (the index is 0 for `start` and `completed`)."""
    if not edit.webhook:
        return []
    happened: list[tuple[str, int]] = []
    if edit.started_at is not None:
        happened.append(("start", 0))
    if (preview := current_preview(edit)) is not None:
        happened.append(("preview", preview["index"]))
    if edit.status != EditStatus.FAILED:
        happened += [("output", index) for index, key in enumerate(edit.output_keys or []) if key is not None]
    if edit.status in TERMINAL:
        happened.append(("completed", 0))
    wanted = normalize_filter(
        [e for e in edit.webhook_events_filter if e in EVENTS] if edit.webhook_events_filter is not None else None
    )
    return [(event, index) for event, index in happened if event in wanted]


def _json_value(value: Any) -> Any:
    # The same spelling as the API's JSON (pydantic writes UTC as "Z").
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def payload(event: str, data: Mapping[str, Any], now: datetime | None = None) -> bytes:
    """The message body: `{"type": "edit.<event>", "timestamp": ISO-8601, "data": <edit resource>}`.

    Serialized once and stored, so every retry sends (and signs) the exact same bytes.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    message = {"type": f"edit.{event}", "timestamp": now or datetime.now(UTC), "data": data}
    return json.dumps(message, separators=(",", ":"), sort_keys=True, default=_json_value).encode()


def event_payload(event: str, edit: Edit, api_base: str, now: datetime | None = None) -> bytes:
    """The message of one event of `edit`: its `data` is the edit resource the API serves (links to the
    outputs, which need the API key; never image bytes). A queued edit sends no event, so no queue position."""
    return payload(event, edit_resource(edit, base_url=api_base, queue=None), now=now)
