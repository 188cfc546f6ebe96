"""Standard Webhooks (https://www.standardwebhooks.com) signing and verification.

Sender side: `secret = generate_secret()`, `signed_headers(secrets, msg_id, body)` on every attempt
(fresh timestamp, same `webhook-id`; several secrets during a rotation give several signatures).
Receiver side, in your own service:

    from common.webhooks.signing import verify, WebhookVerificationError
    event = verify(secret, request.headers, raw_body)     # raises on a bad or stale message

`verify` checks the timestamp against a 5-minute tolerance by default (replay protection is on
unless you pass `tolerance_s=None` explicitly), accepts any of several space-separated signatures
(key rotation), and compares in constant time. Always verify the raw body bytes, not re-serialized
JSON. Use `webhook-id` to drop duplicates: retries reuse it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from common.header_integer import header_integer

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(ValueError):
    """The message is unsigned, wrongly signed, stale, or malformed."""


def generate_secret() -> str:
    """A fresh `whsec_<base64 of 32 random bytes>` secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError as e:
        raise WebhookVerificationError("secret is not base64") from e
    if not key:
        raise WebhookVerificationError("secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">` computed by the standardwebhooks package."""
    if "." in msg_id:
        raise ValueError("webhook-id must not contain '.'")
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return Webhook(secret).sign(msg_id=msg_id, timestamp=when, data=body.decode())


def signed_headers(
    secrets_: str | Iterable[str], msg_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers; several secrets (rotation) give several signatures."""
    timestamp = int(now if now is not None else time.time())
    keys = [secrets_] if isinstance(secrets_, str) else list(secrets_)
    if not keys:
        raise ValueError("at least one secret is needed to sign")
    signature = " ".join(sign(s, msg_id, timestamp, body) for s in keys)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: float | None = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> Any:
    """Check a received webhook and return its parsed JSON body; raise WebhookVerificationError.

    `tolerance_s` bounds |now - webhook-timestamp|; pass None only if you dedupe ids forever.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    timestamp = header_integer(stamp)
    if timestamp is None:
        raise WebhookVerificationError("webhook-timestamp is not an integer of ASCII digits")
    if tolerance_s is not None:
        current = now if now is not None else time.time()
        if abs(current - timestamp) > tolerance_s:
            raise WebhookVerificationError("webhook-timestamp outside the tolerance (replay?)")
    expected = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(expected, given):
            try:
                return json.loads(raw)
            except ValueError as e:
                raise WebhookVerificationError("body is not JSON") from e
    raise WebhookVerificationError("no matching signature")
