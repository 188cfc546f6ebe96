"""Stable API error codes and their HTTP statuses. Every error body is `{"code", "message"}`.

Adding a code is fine; renaming one breaks clients. Job failures (an edit's `error`) use the
pipeline's codes (`no_face`, ...) plus `timeout`, `worker_lost`, `image_not_found`, `internal_error`.
"""

from __future__ import annotations

STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "invalid_prefer": 400,
    "unauthorized": 401,
    "ambiguous_credentials": 401,
    "forbidden": 403,
    "not_found": 404,
    "image_not_found": 404,
    "edit_not_found": 404,
    "upload_not_found": 404,
    "output_not_found": 404,
    "preview_not_found": 404,  # no preview now: none yet, replaced by the full-size output, or the edit ended
    "image_file_missing": 404,
    "method_not_allowed": 405,
    "not_cancelable": 409,
    "upload_consumed": 409,
    "upload_missing": 409,
    "upload_expired": 410,
    "payload_too_large": 413,
    "image_too_large": 413,
    "unsupported_media_type": 415,
    "unsupported_format": 415,
    "validation_error": 422,
    "invalid_cursor": 422,
    "invalid_image": 422,
    "image_too_small": 422,
    "invalid_parameter": 422,  # e.g. a face index the photo does not have (the valid range is named)
    "no_face": 422,  # `faces` asked of a photo in which detection found none
    "rate_limited": 429,
    "queue_full": 429,
    "cost_budget_exceeded": 429,  # the account's unfinished edits would cost too much together (common/edit_cost.py)
    "edit_cost_too_high": 422,  # one edit costs more than MAX_EDIT_COST_SECONDS
    "inversion_unavailable": 422,  # the edit's `inversion` is not offered by every live edit worker (worker_offers)
    # trust (docs/SECURITY.md): Idempotency-Key and the webhook URL guard
    "invalid_idempotency_key": 400,
    "idempotency_key_in_flight": 409,
    "idempotency_key_reused": 422,
    "url_invalid": 422,
    "url_scheme_forbidden": 422,
    "url_forbidden_address": 422,
    "url_forbidden_port": 422,
    "url_unresolvable": 422,
    "service_unavailable": 503,
    "internal_error": 500,
    "broker_unavailable": 503,
    "not_ready": 503,
}


class ApiError(Exception):
    """An error the API answers with `STATUS_BY_CODE[code]` and `{"code", "message"}`."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None):
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown API error code {code!r}: add it to STATUS_BY_CODE")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = STATUS_BY_CODE[code]
        self.headers = headers

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
