"""Typed pipeline errors: every failure a user can cause carries a stable `code`.

The service maps `code` to an HTTP status and a JSON body; the CLI prints it and exits non-zero.
"""

from __future__ import annotations

# Stable codes. Adding one is fine; renaming one breaks clients.
NO_FACE = "no_face"
FACE_TOO_SMALL = "face_too_small"
INVALID_IMAGE = "invalid_image"
INVALID_PARAMETER = "invalid_parameter"
EMPTY_DIRECTION = "empty_direction"
MODEL_MISSING = "model_missing"
MODEL_INVALID = "model_invalid"
CANCELED = "canceled"


class PipelineError(Exception):
    """An error with a stable machine-readable `code` and a human `message`."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Canceled(PipelineError):
    """Raised from inside a long call when its cancel check returns True."""

    def __init__(self, message: str = "the operation was canceled"):
        super().__init__(CANCELED, message)
