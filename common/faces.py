"""Which faces of a photo an edit changes: the request's `faces` ("largest", "all" or indices) against the
faces detected on the image (stored on its row, largest first). One rule for the API, which checks it at
submit time when detection is done, and the worker, which applies it when the job runs."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from common.topology import DETECT_FACES

if TYPE_CHECKING:
    from celery import Celery

    from common.settings import Settings

class FaceStatus(StrEnum):
    """`images.faces_status`: detection runs once per photo, pending → done | failed."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


FaceChoice = str | list[int] | None  # "largest" | "all" | indices; None (older rows) = "largest"


class FaceChoiceError(ValueError):
    """The choice does not fit the photo: `code` is `invalid_parameter` (index or count) or `no_face`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def chosen_faces(choice: FaceChoice, faces: Sequence[Any], max_faces: int) -> list[int]:
    """The indices to edit, in ascending order (largest face first); raises FaceChoiceError."""
    count = len(faces)
    if count == 0:
        raise FaceChoiceError("no_face", "no face was found in the photo")
    if choice is None or choice == "largest":
        return [0]
    if choice == "all":
        if count > max_faces:
            raise FaceChoiceError(
                "invalid_parameter",
                f"the photo has {count} faces and an edit changes at most {max_faces}: list the indices "
                f"(0..{count - 1}) to change",
            )
        return list(range(count))
    wrong = [index for index in choice if not 0 <= index < count]
    if wrong:
        valid = "0" if count == 1 else f"0..{count - 1}"
        raise FaceChoiceError(
            "invalid_parameter",
            f"face index {wrong[0]} is out of range: the photo has {count} face{'s' if count > 1 else ''} "
            f"(valid indices {valid})",
        )
    return sorted(choice)


def enqueue_detection(app: Celery, settings: Settings, image_id: str) -> None:
    """Ask a model worker to detect the photo's faces (the edits queue: detection needs the models)."""
    app.send_task(DETECT_FACES.name, args=[image_id], queue=DETECT_FACES.queue(settings))
