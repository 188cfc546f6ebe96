"""`Prefer: wait=N` (RFC 7240): how long a client asks a create to hold its answer, read once for both
resources that honour it (`POST /v1/edits`, `POST /v1/images`), before either stores anything."""

from __future__ import annotations

from common.errors import ApiError
from common.header_integer import header_integer


def parse_prefer_wait(header: str | None, cap: int) -> int | None:
    """Seconds asked for by `Prefer: wait=N` (RFC 7240; bare `wait` means the cap), or None."""
    if not header:
        return None
    for preference in header.split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value:
            return cap
        seconds = header_integer(value)
        if seconds is None or seconds < 1:
            raise ApiError("invalid_prefer", f"`Prefer: wait=N` needs an integer N in 1..{cap}")
        return min(seconds, cap)
    return None
