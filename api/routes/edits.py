"""`/v1/edits`: submit an edit job, poll it (or hold with `Prefer: wait=N`), list, cancel, fetch outputs."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import and_, bindparam, delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from api.deps import CeleryDep, EditSenderDep, OwnerDep, SessionDep, SettingsDep, StorageDep
from api.openapi import binary_content
from api.prefer import parse_prefer_wait
from api.schemas import EditCreate, EditList, EditOut, ErrorBody
from common import lifecycle, tracing
from common.edit_contract import EditSpec
from common.edit_cost import (
    CostLimits,
    Estimate,
    StageSeconds,
    deadline_seconds,
    edit_cost,
    faces_counted,
    priced_inversion,
    too_costly,
)
from common.edit_resource import current_preview, edit_resource
from common.edit_sender import EditSender
from common.errors import ApiError
from common.faces import FaceChoiceError, FaceStatus, chosen_faces
from common.image_formats import media_type_of_key
from common.lifecycle import EditStatus
from common.models import Edit, Image, new_id, utcnow
from common.queue_caps import QueueCaps, admit
from common.settings import Settings
from common.storage import ObjectNotFound, Storage
from common.webhooks.outbox import push_events
from common.webhooks.urls import check_webhook_url
from common.worker_offers import FleetOffers

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/edits", tags=["edits"])

_ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 422, 429, 503)}
_CURSOR_ID = re.compile(r"[0-9a-z_]{1,40}")  # the shape of `common.models.new_id`


def load_edit(session: Session, owner: str, edit_id: str) -> Edit:
    """The caller's edit; someone else's id is indistinguishable from a missing one."""
    edit = session.get(Edit, edit_id)
    if edit is None or edit.owner != owner:
        raise ApiError("edit_not_found", f"no edit {edit_id!r}")
    return edit


def edit_out(
    edit: Edit, queue: Estimate | None, request: Request, storage: Storage, settings: Settings
) -> EditOut:
    """The public resource of an edit row (`queue` from `lifecycle.queue_positions` or `admit`): the one
    serializer `common.edit_resource`, which the webhook messages use too."""
    expiry = timedelta(seconds=settings.output_url_expiry_seconds)
    return EditOut.model_validate(edit_resource(
        edit, base_url=str(request.base_url), queue=queue,
        presign=lambda key, media_type: storage.presigned_get(key, expiry, media_type),
    ))


def _out(edit: Edit, session: Session, request: Request, storage: Storage, settings: Settings) -> EditOut:
    """One edit's resource, its queue position read alongside."""
    position = lifecycle.queue_positions(session, [edit]).get(edit.id)
    return edit_out(edit, position, request, storage, settings)


def _reread(session: Session, edit_id: str, request: Request, storage: Storage, settings: Settings) -> EditOut:
    """The resource of an edit as stored now (the submit wrote its row without keeping it in the session)."""
    edit = session.get(Edit, edit_id)
    if edit is None:  # deleted while we waited (the photo was deleted, or the account erased)
        raise ApiError("edit_not_found", f"no edit {edit_id!r}")
    return _out(edit, session, request, storage, settings)


# The submit reads two columns of the photo, in Core: an ORM `session.get` per submit cost twice the CPU.
_IMAGES = Image.__table__
_IMAGE_FACES = select(_IMAGES.c.faces_status, _IMAGES.c.faces).where(
    _IMAGES.c.id == bindparam("image_id"), _IMAGES.c.owner == bindparam("owner"))


def _image_faces(session: Session, owner: str, image_id: str) -> tuple[str, list | None]:
    """The caller's photo's face detection status and faces; someone else's photo is a missing one (as in
    `api.routes.images.load_image`)."""
    row = session.connection().execute(_IMAGE_FACES, {"image_id": image_id, "owner": owner}).one_or_none()
    if row is None:
        raise ApiError("image_not_found", f"no image {image_id!r}")
    return row.faces_status, row.faces


def _submit(session: Session, sender: EditSender, settings: Settings, owner: str, body: EditCreate,
            offers: FleetOffers | None = None) -> tuple[Edit, Estimate]:
    """Validate, admit under the queue caps, enqueue: the new row and its queue position (from the caps' count).
    `offers`: what the live edit workers offer (`common.worker_offers`; None while unknown)."""
    spec = body.spec()
    if problem := settings.edit_limits().problem(spec):
        raise ApiError("validation_error", problem)
    if spec.inversion is not None and offers is not None and (refusal := offers.refusal(spec.inversion)):
        raise ApiError("inversion_unavailable", refusal)
    faces_status, faces = _image_faces(session, owner, body.image)
    detected = len(faces) if faces_status == FaceStatus.DONE and faces is not None else None
    counted = faces_counted(spec, detected, settings.max_faces_per_edit)
    inversion = priced_inversion(spec, settings.default_inversion, offers.everywhere if offers else None)
    cost = edit_cost(spec, counted, StageSeconds.from_settings(settings), inversion)
    if problem := too_costly(cost, counted, detected, spec, CostLimits.from_settings(settings)):
        raise ApiError("edit_cost_too_high", problem)
    if faces_status == FaceStatus.DONE and faces:  # else the job applies the rule (or fails `no_face`)
        try:
            chosen_faces(spec.faces, faces, settings.max_faces_per_edit)
        except FaceChoiceError as error:
            raise ApiError(error.code, error.message) from None
    if body.webhook is not None:
        check_webhook_url(body.webhook, settings)
    edit = _new_edit(owner, body, spec, settings, cost)
    # 429 queue_full or cost_budget_exceeded when the caps are reached
    estimate = admit(session, edit, QueueCaps.from_settings(settings))
    try:
        sender.send(edit.id)
    except BrokerError:
        session.execute(delete(Edit).where(Edit.id == edit.id))
        session.commit()
        raise ApiError("broker_unavailable", "the job queue is unreachable; retry shortly") from None
    return edit, estimate


def _queue_row(session: Session, sender: EditSender, settings: Settings, owner: str, body: EditCreate,
               request: Request, storage: Storage) -> tuple[Edit, EditOut]:
    """Submit and describe the new edit in one trip to the threadpool; its queue position is the one `admit`
    counted (no second query: a poll reads it afresh)."""
    reader = request.app.state.worker_offers
    edit, estimate = _submit(session, sender, settings, owner, body, reader.get() if reader is not None else None)
    return edit, edit_out(edit, estimate, request, storage, settings)


def _new_edit(owner: str, body: EditCreate, spec: EditSpec, settings: Settings, cost: float) -> Edit:
    now = utcnow()
    return Edit(
        id=new_id("edt"),
        owner=owner,
        image_id=body.image,
        **Edit.spec_columns(spec),
        webhook=body.webhook,
        webhook_events_filter=body.webhook_events_filter,
        status=EditStatus.STARTING,
        attempt=0,
        created_at=now,
        cost_seconds=cost,
        trace_id=tracing.trace_id(),  # the trace this request started (None when tracing is off)
        deadline_at=now + timedelta(seconds=deadline_seconds(cost, settings.job_deadline_seconds)),
    )


def _status(factory: sessionmaker[Session], edit_id: str) -> str | None:
    with factory() as session:
        return session.scalar(select(Edit.status).where(Edit.id == edit_id))


async def _wait_until_done(request: Request, edit_id: str, seconds: int, interval: float) -> None:
    factory = request.app.state.session_factory
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await run_in_threadpool(_status, factory, edit_id) in lifecycle.TERMINAL:
            return
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


@router.post("", status_code=201, response_model=EditOut, response_model_exclude_unset=True, responses=_ERRORS)
async def create_edit(
    body: EditCreate,
    request: Request,
    response: Response,
    owner: OwnerDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    sender: EditSenderDep,
) -> EditOut:
    """Queue an edit. With `Prefer: wait=N` (1..60) the answer is held until it finishes or N s pass."""
    wait = parse_prefer_wait(request.headers.get("prefer"), settings.max_prefer_wait_seconds)
    edit, out = await run_in_threadpool(_queue_row, session, sender, settings, owner, body, request, storage)
    response.headers["Location"] = out.urls.get  # the route's URL, built without a search of the routes
    if wait is None:
        return out
    await _wait_until_done(request, edit.id, wait, settings.wait_poll_seconds)
    response.headers["Preference-Applied"] = f"wait={wait}"
    return await run_in_threadpool(_reread, session, edit.id, request, storage, settings)


def _encode_cursor(edit: Edit) -> str:
    return base64.urlsafe_b64encode(f"{edit.created_at.isoformat()}|{edit.id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at in UTC, id) a `next` cursor names. Anything else is 422 `invalid_cursor`, never a 500:
    a date at the end of the calendar that overflows when shifted to UTC, a naive one, an id that no edit
    can have (a NUL byte would make PostgreSQL refuse the query)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_text, edit_id = raw.split("|", 1)
        created = datetime.fromisoformat(created_text)
        if created.tzinfo is None or not _CURSOR_ID.fullmatch(edit_id):
            raise ValueError("not a cursor this API wrote")
        return created.astimezone(UTC), edit_id
    except (ValueError, OverflowError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise ApiError("invalid_cursor", "invalid cursor: pass the `next` value of a previous page") from None


@router.get("", response_model=EditList, response_model_exclude_unset=True, responses=_ERRORS)
def list_edits(
    request: Request,
    owner: OwnerDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    cursor: str | None = Query(None, max_length=200),
    limit: int = Query(20, ge=1, le=100),
) -> EditList:
    """The caller's edits, newest first."""
    query = select(Edit).where(Edit.owner == owner)
    if cursor:
        created, edit_id = _decode_cursor(cursor)
        query = query.where(or_(Edit.created_at < created, and_(Edit.created_at == created, Edit.id < edit_id)))
    rows = list(session.scalars(query.order_by(Edit.created_at.desc(), Edit.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    positions = lifecycle.queue_positions(session, page)  # one query for the page
    return EditList(
        results=[edit_out(edit, positions.get(edit.id), request, storage, settings) for edit in page],
        next=_encode_cursor(page[-1]) if len(rows) > limit else None,
    )


@router.get("/{edit_id}", response_model=EditOut, response_model_exclude_unset=True, responses=_ERRORS)
def get_edit(
    edit_id: str, request: Request, owner: OwnerDep, session: SessionDep, storage: StorageDep, settings: SettingsDep
) -> EditOut:
    return _out(load_edit(session, owner, edit_id), session, request, storage, settings)


@router.post("/{edit_id}/cancel", response_model=EditOut, response_model_exclude_unset=True,
             responses=_ERRORS)
def cancel_edit(
    edit_id: str, request: Request, owner: OwnerDep, session: SessionDep, storage: StorageDep, settings: SettingsDep,
    celery: CeleryDep,
) -> EditOut:
    """Cancel a queued or running edit (a running one stops within a fraction of a second)."""
    edit = load_edit(session, owner, edit_id)
    lifecycle.cancel(session, edit.id)
    session.refresh(edit)
    if edit.status in (EditStatus.SUCCEEDED, EditStatus.FAILED):
        raise ApiError("not_cancelable", f"the edit already {edit.status}")
    if edit.status == EditStatus.CANCELED:  # a queued edit ends here; a running one ends in its worker
        push_events(session, celery, edit.id, settings.public_base_url, settings.webhooks_queue)
        session.refresh(edit)
    return _out(edit, session, request, storage, settings)


@router.get("/{edit_id}/preview", response_class=Response,
            responses={**_ERRORS, 200: {"description": "The preview of the first strength (JPEG).",
                                        **binary_content(["image/*"])}})
def get_edit_preview(edit_id: str, owner: OwnerDep, session: SessionDep, storage: StorageDep) -> Response:
    """The first strength's preview while the edit resource shows one (the URL form used with local storage;
    S3 hands out presigned URLs); 404 `preview_not_found` before it, once the full-size output replaced it, and
    once the edit ended."""
    edit = load_edit(session, owner, edit_id)
    preview = current_preview(edit)
    if preview is None:
        raise ApiError("preview_not_found", f"edit {edit_id!r} has no preview now")
    try:
        body = storage.get(preview["key"])
    except ObjectNotFound:  # replaced (the worker deletes it once the full-size output is on the row)
        raise ApiError("preview_not_found", f"edit {edit_id!r} has no preview now") from None
    return Response(body, media_type=media_type_of_key(preview["key"]) or "image/jpeg",
                    headers={"Cache-Control": "private, no-store"})


@router.get("/{edit_id}/outputs/{index}", response_class=Response,
            responses={**_ERRORS, 200: {"description": "The result image, in the edit's `output_format`.",
                                        **binary_content(["image/*"])}})
def get_edit_output(
    edit_id: str, index: int, owner: OwnerDep, session: SessionDep, storage: StorageDep
) -> Response:
    """One result image (the URL form used with local storage; S3 hands out presigned URLs)."""
    edit = load_edit(session, owner, edit_id)
    keys = edit.output_keys or []
    if edit.status in (EditStatus.STARTING, EditStatus.FAILED) or not 0 <= index < len(keys) or keys[index] is None:
        raise ApiError("output_not_found", f"edit {edit_id!r} has no output {index}")
    try:
        body = storage.get(keys[index])
    except ObjectNotFound:  # deleted under us (retention, erasure) or lost by the store
        log.warning("edit %s output %d: stored object %s is missing", edit_id, index, keys[index])
        raise ApiError("output_not_found", f"edit {edit_id!r} output {index} is no longer stored") from None
    media_type = media_type_of_key(keys[index]) or "application/octet-stream"
    return Response(body, media_type=media_type, headers={"Cache-Control": "private"})
