"""Face detection, once per photo, in a model worker (docs/ARCHITECTURE.md, "Face detection").

The API has no pipeline: right after a photo is stored it sends `detect_faces` (common.topology.DETECT_FACES) to
the edits queue, and the first model worker free runs it and stores the faces on the images row. An edit
that runs before that (or after a lost message) detects itself and stores the answer the same way, so every
later edit of the photo reuses it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from common.faces import FaceStatus
from common.models import Image
from common.storage import ObjectNotFound
from common.storage_layout import original_key
from worker.runtime import Runtime

if TYPE_CHECKING:
    from pipeline import Editor

log = logging.getLogger("worker.detection")


def detect(editor: Editor, photo: bytes) -> list[dict[str, Any]]:
    """The photo's faces as stored and served: `[{index, box: [l, t, r, b], score}]`, largest first."""
    return [face.to_dict() for face in editor.detect(photo)]


def store_faces(runtime: Runtime, image_id: str, faces: list[dict[str, Any]] | None, status: str) -> None:
    """Record the detection on the images row (nothing happens when the image was deleted meanwhile)."""
    with runtime.session_factory() as session:
        session.execute(
            update(Image).where(Image.id == image_id).values(faces=faces, faces_status=status),
            execution_options={"synchronize_session": False},
        )
        session.commit()


def run_detection(runtime: Runtime, image_id: str) -> str:
    """The `detect_faces` task: detect once and store; returns what happened (for logs and tests)."""
    from pipeline import PipelineError

    with runtime.session_factory() as session:
        image = session.get(Image, image_id)
        if image is None:
            return "gone"
        if image.faces_status == FaceStatus.DONE:
            return "done already"
    try:
        photo = runtime.storage.get(original_key(image_id))
    except ObjectNotFound:
        return "gone"
    try:
        faces = detect(runtime.editor(), photo)
    except PipelineError as error:  # a photo the pipeline cannot read, or no model: the edit will say why
        log.info("face detection of %s failed: %s", image_id, error)
        store_faces(runtime, image_id, None, FaceStatus.FAILED)
        return FaceStatus.FAILED
    store_faces(runtime, image_id, faces, FaceStatus.DONE)
    return FaceStatus.DONE
