"""Face detection, once per photo, in a model worker (docs/ARCHITECTURE.md, "Face detection"), then the
inversion of the face an edit will most likely change, while the person writes the text.

The API has no pipeline: right after a photo is stored it sends `detect_faces` (common.topology.DETECT_FACES) to
the edits queue, and the first model worker free runs it and stores the faces on the images row (the boxes
that are served, and each face's landmarks, so that any worker aligns the face later without searching the
photo again). An edit that runs before that (or after a lost message) detects itself and stores the answer the
same way, so every later edit of the photo reuses it.

Then, with the faces stored (clients polling for them see them at once), the task inverts the largest
`PREPARE_INVERSIONS` faces with the inverter an edit naming none would run, into the inversion cache
(`worker.inversion_cache`): the phone app uploads a photo as soon as it is picked, so by the time the text is
written and sent, the edit finds its inversion done (on two CPU cores, e4e's ~1 s of a new photo's ~2.5 s
before its first image). Write, then verify, as an edit does: a photo deleted meanwhile loses what was just
written.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from common.faces import FaceStatus
from common.lifecycle import ACTIVE
from common.models import Edit, Image
from common.storage import ObjectNotFound
from common.storage_layout import original_key
from worker.inversion_cache import cache_key, fleet_inversion, invert_spec, preparing, read_cached
from worker.runtime import Runtime

if TYPE_CHECKING:
    from pipeline import Editor, FaceBox

log = logging.getLogger("worker.detection")


def store_faces(runtime: Runtime, image_id: str, faces: list[FaceBox] | None, status: str) -> None:
    """Record the detection on the images row: `faces` as served (`[{index, box: [l, t, r, b], score}]`) and
    `landmarks` beside it (nothing happens when the image was deleted meanwhile)."""
    served = None if faces is None else [face.to_dict() for face in faces]
    landmarks = None if faces is None else [face.landmarks.tolist() for face in faces]
    with runtime.session_factory() as session:
        session.execute(
            update(Image).where(Image.id == image_id).values(faces=served, landmarks=landmarks, faces_status=status),
            execution_options={"synchronize_session": False},
        )
        session.commit()


def stored_detection(image: Image) -> list[FaceBox] | None:
    """The row's detection back as the pipeline's `FaceBox`es with their landmarks, or None when it has none
    to give (not detected yet, a row from before landmarks were kept, or values that do not fit together: the
    pipeline's own check, `detected_faces`): the caller then detects anew."""
    import numpy as np

    from pipeline import FaceBox, PipelineError
    from pipeline.faces.detect import detected_faces

    faces, landmarks = image.faces, image.landmarks
    if image.faces_status != FaceStatus.DONE or not isinstance(faces, list) or not isinstance(landmarks, list) \
            or len(faces) != len(landmarks):
        return None
    try:
        boxes = [FaceBox(index=int(face["index"]), box=tuple(int(v) for v in face["box"]), score=float(face["score"]),
                         landmarks=np.asarray(points, dtype=np.float64))
                 for face, points in zip(faces, landmarks, strict=True)]
        detected_faces(boxes)
    except (KeyError, TypeError, ValueError, PipelineError):
        log.warning("image %s: its stored detection is unreadable; detecting again", image.id)
        return None
    return boxes


def run_detection(runtime: Runtime, image_id: str) -> str:
    """The `detect_faces` task: detect once and store, then prepare the inversions; returns what happened
    (for logs and tests)."""
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
    editor = runtime.editor()
    try:
        faces = editor.detect(photo)
    except PipelineError as error:  # a photo the pipeline cannot read, or no model: the edit will say why
        log.info("face detection of %s failed: %s", image_id, error)
        store_faces(runtime, image_id, None, FaceStatus.FAILED)
        return FaceStatus.FAILED
    store_faces(runtime, image_id, faces, FaceStatus.DONE)
    prepare_inversions(runtime, editor, image_id, photo, faces)
    return FaceStatus.DONE


def prepare_inversions(runtime: Runtime, editor: Editor, image_id: str, photo: bytes, faces: list[FaceBox]) -> int:
    """Invert the largest `PREPARE_INVERSIONS` faces into the inversion cache, as an edit naming no inverter
    would (same inverter, same key); returns how many were computed. A face the pipeline refuses (too small,
    the bundle lacks the inverter) is left to the edit, which reports it; a photo deleted meanwhile stops it
    and loses what it wrote; so does an edit of the photo already queued or running (it inverts itself)."""
    from pipeline import PipelineError

    count = min(runtime.settings.prepare_inversions, len(faces))
    if count == 0:
        return 0
    spec = invert_spec(fleet_inversion(runtime, editor, None))
    computed = 0
    for face in range(count):
        if _edit_on_its_way(runtime, image_id):
            # a client that uploads and submits at once: its edit inverts what it needs (showing a preview
            # before e4e's last heads), sooner than after this inversion, and no worker computes it twice
            log.info("image %s: an edit is on its way; it inverts the faces itself", image_id)
            break
        key = cache_key(image_id, editor, face, spec)
        with preparing(runtime, key) as ours:  # edits that miss the cache meanwhile wait for this one
            if not ours or read_cached(runtime, key, face) is not None:
                continue
            start = time.perf_counter()
            try:
                editor.check_inversion(spec.inversion)
                inversion = editor.invert(photo, face=face, faces=faces, inversion=spec.inversion)
            except PipelineError as error:
                log.info("image %s: face %d not prepared (%s)", image_id, face, error.code)
                break
            runtime.storage.put(key, inversion.to_bytes())
            if not _image_exists(runtime, image_id):
                runtime.storage.delete([key])
                log.info("image %s was deleted while its inversion was prepared", image_id)
                break
        computed += 1
        log.info("image %s: face %d inverted by %s in %.2f s, ready for its edits", image_id, face, spec.inversion,
                 time.perf_counter() - start)
    return computed


def _edit_on_its_way(runtime: Runtime, image_id: str) -> bool:
    """Whether an edit of the photo is queued or running."""
    with runtime.session_factory() as session:
        return session.scalar(select(Edit.id).where(Edit.image_id == image_id, Edit.status.in_(ACTIVE)).limit(1)) \
            is not None


def _image_exists(runtime: Runtime, image_id: str) -> bool:
    """Right after a write: a deletion removes the row before the objects, so a write it may have missed is
    seen here and undone (the orphan sweep is the backstop)."""
    with runtime.session_factory() as session:
        return session.get(Image, image_id, populate_existing=True) is not None
