"""Run one edit job: claim the row, find the chosen faces (the photo's stored detection), invert each (or reuse
its cached inversion), render the strengths, store each as it comes, finish.

Exactly-once rests on the row, not on Celery: the claim is a conditional UPDATE that hands the row
to this run's token; a heartbeat thread renews the lease; every write (progress, each output, result) is
conditional on still holding it. Results go to deterministic keys, so a re-run after a lost worker
overwrites instead of duplicating, and a run that lost its row (reaped) discards them. Each finished
strength is on the row (and its `output` webhook sent) before the next renders; a cancel between
strengths keeps those (the edit ends `canceled`, its finished outputs listed).

Write, then verify: a deletion (`DELETE /v1/images/{id}`, `DELETE /v1/me/data`, retention) cancels the
edit before it deletes the objects, so every object the job stores is followed by a look at the row; a
job that no longer holds it deletes what it just wrote. The periodic orphan sweep is the backstop.

Failures after the claim: a pipeline error fails the edit with its code; an unreachable database, broker
or storage is left to the lease (the reaper sends the job again); anything else is a bug, which another
attempt would only repeat: the edit fails at once with `internal_error`, logged with its traceback.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from common import lifecycle
from common.edit_contract import INVERT, RENDER, EditSpec
from common.faces import FaceChoiceError, FaceStatus, chosen_faces
from common.image_formats import FORMATS
from common.lifecycle import Claim, EditStatus
from common.metrics import observe_edit
from common.models import Edit, Image
from common.storage import ObjectNotFound, StorageUnavailable
from common.storage_layout import original_key, preview_key, result_key, results_prefix
from common.webhooks.outbox import push_events
from worker.detection import store_faces, stored_detection
from worker.inversion_cache import cache_key, fleet_inversion, read_cached, wait_for_prepared
from worker.runtime import Runtime, encoder_run

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from pipeline import Editor, FaceBox, Inversion, PendingInversion

log = logging.getLogger("worker.edit")

INVERT_STAGES = ("align", "invert")
EDIT_STAGES = {"global": ("direction", "synthesize", "paste"), "optimize": ("optimize", "synthesize", "paste")}
INVERT_SHARE = 0.4  # of the progress bar, when the inversion is not cached
PREVIEW_QUALITY = 80  # JPEG quality of the preview: a stand-in for a second or so, small to send


def new_token() -> str:
    """Identifies one run of one job (host, pid, random) in the row's `worker` column."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Heartbeat(threading.Thread):
    """Renews the lease while the job runs; notices when the row is no longer ours."""

    def __init__(self, runtime: Runtime, edit_id: str, token: str):
        super().__init__(name=f"heartbeat-{edit_id}", daemon=True)
        self.runtime, self.edit_id, self.token = runtime, edit_id, token
        self.lost = threading.Event()
        self._stopping = threading.Event()  # not `_stop`: that name is Thread.join()'s own method

    def run(self) -> None:
        settings = self.runtime.settings
        while not self._stopping.wait(settings.heartbeat_seconds):
            try:
                with self.runtime.session_factory() as session:
                    if not lifecycle.renew_lease(session, self.edit_id, self.token, settings.lease_seconds):
                        self.lost.set()
                        return
            except SQLAlchemyError:
                # A database blip: the lease has slack (several heartbeats) for the next try.
                log.warning("lease renewal of %s failed; retrying", self.edit_id, exc_info=True)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)


class Watcher:
    """The pipeline's `progress` and `should_cancel` callbacks, throttled, backed by the row."""

    def __init__(self, runtime: Runtime, edit_id: str, token: str, heartbeat: Heartbeat):
        self.runtime, self.edit_id, self.token, self.heartbeat = runtime, edit_id, token, heartbeat
        self._last_check = 0.0
        self._last_write = 0.0
        self._held = True
        self.span = (0.0, 1.0)
        self.stages: tuple[str, ...] = INVERT_STAGES

    def phase(self, stages: tuple[str, ...], start: float, end: float) -> None:
        self.stages, self.span = stages, (start, end)

    def should_cancel(self) -> bool:
        if self.heartbeat.lost.is_set() or not self._held:
            return True
        now = time.monotonic()
        if now - self._last_check >= self.runtime.settings.cancel_check_seconds:
            self._last_check = now
            with self.runtime.session_factory() as session:
                self._held = lifecycle.still_held(session, self.edit_id, self.token)
        return not self._held

    def progress(self, stage: str, fraction: float) -> None:
        if stage not in self.stages:
            return  # sub-stages (e.g. optimize steps) are covered by their parent stage
        index = self.stages.index(stage)
        start, end = self.span
        overall = start + (end - start) * (index + max(0.0, min(1.0, fraction))) / len(self.stages)
        now = time.monotonic()
        if now - self._last_write < self.runtime.settings.progress_write_seconds:
            return
        self._last_write = now
        with self.runtime.session_factory() as session:
            if not lifecycle.record_progress(session, self.edit_id, self.token, overall):
                self._held = False


def run_edit(runtime: Runtime, edit_id: str, token: str | None = None) -> str:
    """Process edit `edit_id` if it is ours to process; returns what happened (for logs and tests)."""
    settings = runtime.settings
    token = token or new_token()
    with runtime.session_factory() as session:
        claim = lifecycle.claim(session, edit_id, token, settings.lease_seconds, settings.max_attempts)
    if claim is not Claim.CLAIMED:
        log.info("edit %s not processed: %s", edit_id, claim.value)
        return claim.value
    heartbeat = Heartbeat(runtime, edit_id, token)
    heartbeat.start()
    try:
        _push_webhooks(runtime, edit_id)  # `start`
        return _process(runtime, edit_id, token, heartbeat)
    except Exception as error:
        if is_infrastructure_error(error):
            log.warning("edit %s interrupted: %s: %s; the reaper sends it again once its lease expires",
                        edit_id, type(error).__name__, error)
            raise
        log.exception("edit %s crashed", edit_id)
        return _crash(runtime, edit_id, token)
    finally:
        heartbeat.stop()
        _push_webhooks(runtime, edit_id)  # `output` and `completed`, whatever the outcome


def is_infrastructure_error(error: BaseException) -> bool:
    """Database, broker or storage unreachable (or one of their errors caused ``error``): worth another attempt
    later, on this worker or another. Anything else is a bug that another attempt would only repeat."""
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    unreachable = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, BrokerError,
                   RedisConnectionError, RedisTimeout, StorageUnavailable)
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, unreachable) or _s3_unreachable(seen):
            return True
        seen = seen.__cause__
    return False


def _s3_unreachable(error: BaseException) -> bool:
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as S3ConnectionError

    if isinstance(error, (S3ConnectionError, HTTPClientError)):
        return True  # endpoint unreachable, connection closed, read timeout
    # S3's own "try again later" answers: 500 InternalError, 503 SlowDown / ServiceUnavailable
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) if isinstance(error, ClientError) else 0
    return status >= 500


def _crash(runtime: Runtime, edit_id: str, token: str) -> str:
    """Record a bug's outcome on a fresh session (the job's own may be the broken part), without outputs."""
    message = "the worker hit an unexpected error; it was logged"
    with runtime.session_factory() as session:
        if lifecycle.fail(session, edit_id, token, lifecycle.INTERNAL_ERROR, message):
            observe_edit({}, EditStatus.FAILED, lifecycle.INTERNAL_ERROR)
    _discard_results(runtime, edit_id)
    return EditStatus.FAILED


def _push_webhooks(runtime: Runtime, edit_id: str) -> None:
    """Send the edit's due webhook events now (`push_events` never raises; the sweep is the fallback)."""
    with runtime.session_factory() as session:
        push_events(session, runtime.celery, edit_id, runtime.settings.public_base_url, runtime.settings.webhooks_queue)


def _process(runtime: Runtime, edit_id: str, token: str, heartbeat: Heartbeat) -> str:
    from pipeline import Canceled, PipelineError

    with runtime.session_factory() as session:
        edit = session.get(Edit, edit_id)
    if edit is None:  # its photo was deleted right after the claim
        return "gone"
    watcher = Watcher(runtime, edit_id, token, heartbeat)
    metrics: dict[str, Any] = {"attempt": edit.attempt}
    if edit.started_at is not None:
        metrics["queue_seconds"] = round((edit.started_at - edit.created_at).total_seconds(), 3)
    model: dict[str, Any] | None = None
    start = time.perf_counter()
    with runtime.session_factory() as session:
        try:
            from pipeline.edit.params import validate_render

            spec = edit.spec
            render_args = _render_args(spec)
            validate_render(**render_args)  # before any model work
            editor = runtime.editor()
            model = {**editor.versions, "dev_bundle": editor.is_dev}
            if run := encoder_run(editor):
                model["encoder_run"] = run
            spec = _resolve_inversion(runtime, editor, edit, token, session)  # before the photo is read
            editor.check_texts(render_args["changes"])  # CLIP's token limit, before the inversion
            if spec.mode == "global":  # a new text's direction computes while the photo is inverted
                editor.prefetch_directions(render_args["changes"])
            photo = runtime.storage.get(original_key(edit.image_id))
            chosen, detection = _chosen_faces(runtime, editor, edit, photo)
            # a preview where the render takes long enough to be worth one (a CPU: ~1 s at 1024²; a GPU
            # renders the full size in milliseconds); a new inversion's last rows then wait until it is shown
            preview = editor.device.type == "cpu"
            inversions = _inversions(runtime, editor, edit, spec, token, photo, watcher, metrics, chosen, detection,
                                     staged=preview and spec.mode == "global")
            start_share = 0.0 if metrics["inversion_cached"] else INVERT_SHARE
            watcher.phase(EDIT_STAGES[spec.mode], start_share, 1.0)
            outputs = OutputWriter(runtime, edit, token)
            editor.render(photo, inversions, **render_args, progress=watcher.progress,
                          should_cancel=watcher.should_cancel, metrics=metrics, on_output=outputs.write,
                          on_preview=outputs.preview if preview else None)
            _cache_finished(runtime, editor, edit, spec, token, inversions)
            metrics["store_seconds"] = outputs.store_seconds
            metrics["total_seconds"] = time.perf_counter() - start
            if lifecycle.succeed(session, edit_id, token, outputs.keys, _rounded(metrics), model, outputs.likeness):
                observe_edit(metrics, EditStatus.SUCCEEDED)
                return EditStatus.SUCCEEDED
            _discard_unless_won(runtime, session, edit_id)
            return "lost"
        except Canceled:
            lifecycle.release_canceled(session, edit_id, token)  # the outputs recorded so far stay listed
            observe_edit(metrics, EditStatus.CANCELED)
            _discard_unless_won(runtime, session, edit_id)
            return EditStatus.CANCELED
        except PipelineError as error:
            _discard_results(runtime, edit_id)
            return _fail(session, edit_id, token, error.code, error.message, metrics, model, start)
        except FaceChoiceError as error:
            return _fail(session, edit_id, token, error.code, error.message, metrics, model, start)
        except ObjectNotFound:
            message = "the photo was deleted before the edit ran"
            return _fail(session, edit_id, token, lifecycle.IMAGE_NOT_FOUND, message, metrics, model, start)


def _render_args(spec: EditSpec) -> dict[str, Any]:
    """The contract's render fields as `Editor.render` takes them, by name: its `changes` as the pipeline's
    `Change`s."""
    from pipeline.edit.directions import Change

    args = spec.pipeline_args(RENDER)
    args["changes"] = [Change(c["neutral"], c["target"], float(c["weight"])) for c in args["changes"]]
    return args


def _chosen_faces(runtime: Runtime, editor: Editor, edit: Edit, photo: bytes) -> tuple[list[int], list[FaceBox] | None]:
    """The face indices to edit, and the photo's detection with the landmarks that align them: the stored one
    (the `detect_faces` task), else detected now and stored for the next edit. The detection is None when
    the stored one has no landmarks (a row from before they were kept): aligning then searches the photo.
    FaceChoiceError when the choice does not fit the photo."""
    with runtime.session_factory() as session:
        image = session.get(Image, edit.image_id)
        done = image is not None and image.faces_status == FaceStatus.DONE and image.faces is not None
        faces, detection = (image.faces, stored_detection(image)) if done else (None, None)
    if faces is None:
        detection = editor.detect(photo)
        faces = [face.to_dict() for face in detection]
        store_faces(runtime, edit.image_id, detection, FaceStatus.DONE)
    return chosen_faces(edit.spec.faces, faces, runtime.settings.max_faces_per_edit), detection


def _resolve_inversion(runtime: Runtime, editor: Editor, edit: Edit, token: str, session: Session) -> EditSpec:
    """The edit with the inverter it runs with (`inversion_cache.fleet_inversion`), recorded on the row so the
    edit resource says which one made it. A PipelineError (`model_missing`, saying how to add the file) when
    the bundle lacks it: before any face is aligned."""
    spec = edit.spec
    inversion = fleet_inversion(runtime, editor, spec.inversion)
    editor.check_inversion(inversion)
    if inversion != spec.inversion:
        spec = spec.model_copy(update={"inversion": inversion})
        lifecycle.record_options(session, edit.id, token, Edit.spec_columns(spec)["options"])
    return spec


def _inversions(runtime: Runtime, editor: Editor, edit: Edit, spec: EditSpec, token: str, photo: bytes,
                watcher: Watcher, metrics: dict, chosen: list[int], detection: list[FaceBox] | None,
                staged: bool = False) -> list[Inversion | PendingInversion]:
    """One inversion per chosen face, each cached on its own; the first share of the progress bar is split
    between the faces that are not cached. `staged`: a face not cached is a `PendingInversion` (e4e), which
    the render finishes after its preview and `_cache_finished` then caches."""
    inversions, cached = [], []
    for n, face in enumerate(chosen):
        watcher.phase(INVERT_STAGES, INVERT_SHARE * n / len(chosen), INVERT_SHARE * (n + 1) / len(chosen))
        inversion, hit = _inversion(runtime, editor, edit, spec, token, photo, watcher, metrics, face, detection,
                                    staged)
        inversions.append(inversion)
        cached.append(hit)
    metrics["inversion_cached"] = all(cached)
    entries = {entry["index"]: entry for entry in metrics.setdefault("faces", [])}
    metrics["faces"] = [{**entries.get(face, {"index": face}), "inversion_cached": hit}
                        for face, hit in zip(chosen, cached, strict=True)]
    return inversions


def _inversion(runtime: Runtime, editor: Editor, edit: Edit, spec: EditSpec, token: str, photo: bytes,
               watcher: Watcher, metrics: dict, face: int, detection: list[FaceBox] | None,
               staged: bool = False) -> tuple[Inversion | PendingInversion, bool]:
    """Face `face`'s cached inversion (`worker.inversion_cache`: an earlier edit's, or the one prepared at
    upload), or a fresh one, then cached for the next edit of this photo if the job still holds its row once
    the cache is written (`_still_ours`). Returns it and whether it was cached. `detection`: the photo's stored
    faces with their landmarks, so that aligning does not search the photo again (None: it does)."""
    from pipeline import PendingInversion

    key = cache_key(edit.image_id, editor, face, spec)
    inversion = read_cached(runtime, key, face) \
        or wait_for_prepared(runtime, key, face, should_cancel=watcher.should_cancel)
    if inversion is not None:
        return inversion, True
    inversion = editor.invert(photo, face=face, progress=watcher.progress, should_cancel=watcher.should_cancel,
                              metrics=metrics, faces=detection, staged=staged, **spec.pipeline_args(INVERT))
    if not isinstance(inversion, PendingInversion):
        _cache(runtime, edit, token, key, inversion)
    return inversion, False


def _cache_finished(runtime: Runtime, editor: Editor, edit: Edit, spec: EditSpec, token: str,
                    inversions: list[Inversion | PendingInversion]) -> None:
    """The inversions the render finished after its preview, cached for the next edit of this photo."""
    from pipeline import PendingInversion

    for inversion in inversions:
        if isinstance(inversion, PendingInversion) and inversion.finished:
            key = cache_key(edit.image_id, editor, inversion.face_index, spec)
            _cache(runtime, edit, token, key, inversion.finish())


def _cache(runtime: Runtime, edit: Edit, token: str, key: str, inversion: Inversion) -> None:
    """Write, then verify: a run that no longer holds its row (or whose photo is gone) deletes what it wrote."""
    from pipeline import Canceled

    runtime.storage.put(key, inversion.to_bytes())
    if not _still_ours(runtime, edit, token):
        runtime.storage.delete([key])
        raise Canceled()


def _still_ours(runtime: Runtime, edit: Edit, token: str) -> bool:
    """Right after a write: does this run still hold the edit, and does its photo still exist? A deletion
    cancels the edit before it deletes objects, so a write it may have missed is seen here and undone."""
    with runtime.session_factory() as session:
        held = lifecycle.still_held(session, edit.id, token)
        alive = held and session.get(Image, edit.image_id, populate_existing=True) is not None
        session.rollback()
    return alive


class OutputWriter:
    """`render`'s `on_output`: each finished strength is stored, then recorded on the row (so clients see it
    while the others render) and its `output` webhook event sent. Write, then verify: a row no longer held
    (canceled, deleted, reaped) makes the job delete what it just wrote and stop.

    `render`'s `on_preview` too: the first strength's preview is stored (`storage_layout.preview_key`) and named
    on the row, and its `preview` event sent; the output it stands in for clears it from the row in the same
    write, then the object is deleted."""

    def __init__(self, runtime: Runtime, edit: Edit, token: str):
        self.runtime, self.edit, self.token = runtime, edit, token
        self.keys: list[str | None] = [None] * len(edit.alphas)
        self.likeness: list[float | None] | None = None  # stays None without an identity model
        self.store_seconds = 0.0
        self.previewed: int | None = None  # the output index the stored preview stands in for

    def preview(self, preview) -> None:
        from pipeline import Canceled
        from pipeline.faces.photo import encode_image

        start = time.perf_counter()
        edit, storage = self.edit, self.runtime.storage
        key = preview_key(edit.id)
        storage.put(key, encode_image(preview.image, "jpeg", quality=PREVIEW_QUALITY), "image/jpeg")
        width, height = preview.image.size
        with self.runtime.session_factory() as session:
            held = lifecycle.record_preview(session, edit.id, self.token,
                                            {"key": key, "index": preview.index, "width": width, "height": height})
        self.store_seconds += time.perf_counter() - start
        if not held:
            storage.delete([key])
            raise Canceled()
        self.previewed = preview.index
        _push_webhooks(self.runtime, edit.id)  # the `preview` event, for subscribers that asked for it

    def write(self, output) -> None:
        from pipeline import Canceled
        from pipeline.faces.photo import encode_image

        start = time.perf_counter()
        edit, storage = self.edit, self.runtime.storage
        image_format = FORMATS[edit.output_format]
        key = result_key(edit.id, output.index, image_format.extension)
        storage.put(key, encode_image(output.image, image_format.name), image_format.media_type)
        self.keys[output.index] = key
        if output.likeness is not None:
            self.likeness = self.likeness or [None] * len(edit.alphas)
            self.likeness[output.index] = round(min(output.likeness), 4)  # the face that changed most
        replaces_preview = self.previewed == output.index
        with self.runtime.session_factory() as session:
            held = lifecycle.record_outputs(session, edit.id, self.token, self.keys, self.likeness,
                                            clear_preview=replaces_preview)
        if held and replaces_preview:
            storage.delete([preview_key(edit.id)])
            self.previewed = None
        self.store_seconds += time.perf_counter() - start
        if not held:
            storage.delete([key])
            raise Canceled()
        _push_webhooks(self.runtime, edit.id)  # this output's `output` event


def _discard_results(runtime: Runtime, edit_id: str) -> None:
    runtime.storage.delete_prefix(results_prefix(edit_id))


def _fail(session, edit_id, token, code, message, metrics, model, start) -> str:
    metrics["total_seconds"] = time.perf_counter() - start
    lifecycle.fail(session, edit_id, token, code, message, _rounded(metrics), model)
    observe_edit(metrics, EditStatus.FAILED, code)
    log.info("edit %s failed: %s (%s)", edit_id, code, message)
    return EditStatus.FAILED


def _discard_unless_won(runtime: Runtime, session, edit_id: str) -> None:
    """We lost the row. Our result files are garbage unless another run of this job succeeded (it
    wrote the same keys) or is still writing them; a canceled edit keeps the outputs its row lists."""
    edit = session.get(Edit, edit_id, populate_existing=True)
    session.rollback()
    if edit is None or edit.status == EditStatus.FAILED:
        _discard_results(runtime, edit_id)
    elif edit.status == EditStatus.CANCELED:
        kept = set(edit.output_keys or [])
        runtime.storage.delete([key for key in runtime.storage.list(results_prefix(edit_id)) if key not in kept])


def _rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    def value(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 3)
        if isinstance(v, list):
            return [value(item) for item in v]
        if isinstance(v, dict):
            return {k: value(item) for k, item in v.items()}
        return v

    return {k: value(v) for k, v in metrics.items()}
