"""The one reader of an integer that an HTTP header carries (RFC 9110's `1*DIGIT`): `Content-Length`,
`Prefer: wait=N`, `Retry-After`, `webhook-timestamp`.

ASCII digits only, and a bounded count of them. `str.isdigit()` also accepts "²" or "٣", which `int()` then
refuses (a bare ValueError, a 500) or reads as another number; and `int()` of more than 4300 digits raises
too. Every layer that reads a number from a header calls this, so none of them can disagree on what one is.
"""

from __future__ import annotations

import re

MAX_DIGITS = 18  # fits a signed 64-bit integer: every header value this service reads is far below it
_DIGITS = re.compile(rb"[0-9]{1,%d}" % MAX_DIGITS)


def header_integer(value: str | bytes | None) -> int | None:
    """The non-negative integer `value` spells (surrounding blanks allowed), or None for anything else:
    absent, empty, signed, non-ASCII digits, a fraction, more than MAX_DIGITS digits."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            return None
    value = value.strip(b" \t")
    return int(value) if _DIGITS.fullmatch(value) else None
