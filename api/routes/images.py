"""`/v1/images`: upload a photo (multipart, or claim a presigned upload), read it, delete it.

`POST /v1/images` declares only its multipart body: an operation with two request content types breaks
client generators (openapi-python-client's module fails at import). Claiming an upload is its own
operation, `POST /v1/images/from-upload`; the JSON form of `POST /v1/images` still works for existing
clients but is left out of the schema (docs/API.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import timedelta

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from kombu.exceptions import OperationalError as BrokerError
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from api.deps import OwnerDep, SessionDep, SettingsDep, StorageDep
from api.openapi import binary_content
from api.photo_check import inspect_photo
from api.prefer import parse_prefer_wait
from api.schemas import ErrorBody, FaceOut, ImageFromUpload, ImageOut, ImageUrls
from common.errors import ApiError
from common.faces import FaceStatus, enqueue_detection
from common.image_formats import FORMATS
from common.models import Image, Upload, new_id
from common.retention import purge_image
from common.settings import Settings
from common.storage import ObjectNotFound, Storage
from common.storage_layout import original_key, upload_key

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/images", tags=["images"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 409, 413, 415, 422, 429)}


def load_image(session: Session, owner: str, image_id: str) -> Image:
    """The caller's image; someone else's id is indistinguishable from a missing one."""
    image = session.get(Image, image_id)
    if image is None or image.owner != owner:
        raise ApiError("image_not_found", f"no image {image_id!r}")
    return image


def image_out(image: Image, request: Request, storage: Storage, settings: Settings) -> ImageOut:
    presigned = storage.presigned_get(
        original_key(image.id),
        timedelta(seconds=settings.output_url_expiry_seconds),
        FORMATS[image.format].media_type,
    )
    return ImageOut(
        id=image.id,
        width=image.width,
        height=image.height,
        format=image.format,
        bytes=image.bytes,
        created_at=image.created_at,
        faces=[FaceOut(**face) for face in image.faces] if image.faces is not None else None,
        faces_status=image.faces_status or FaceStatus.PENDING,
        urls=ImageUrls(
            get=str(request.url_for("get_image", image_id=image.id)),
            file=presigned or str(request.url_for("get_image_file", image_id=image.id)),
        ),
    )


def store_image(session: Session, storage: Storage, settings: Settings, owner: str, data: bytes) -> Image:
    """Validate the photo, keep its original bytes and record it."""
    if len(data) > settings.max_upload_bytes:
        raise ApiError("payload_too_large", f"the photo exceeds {settings.max_upload_bytes} bytes")
    info = inspect_photo(data, settings.max_image_pixels, settings.min_image_side)
    image = Image(
        id=new_id("img"),
        owner=owner,
        format=info.format,
        width=info.width,
        height=info.height,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    storage.put(original_key(image.id), data, FORMATS[info.format].media_type)
    session.add(image)
    session.commit()
    return image


def request_detection(request: Request, image: Image) -> None:
    """Ask a model worker to find the photo's faces (docs/ARCHITECTURE.md, "Face detection"). A broker
    that refuses the message does not fail the upload: the photo's first edit detects them itself."""
    try:
        enqueue_detection(request.app.state.celery, request.app.state.settings, image.id)
    except BrokerError:
        log.warning("face detection of %s not queued (broker unreachable); its first edit detects", image.id)


def _faces_status(request: Request, image_id: str) -> str | None:
    with request.app.state.session_factory() as session:
        return session.scalar(select(Image.faces_status).where(Image.id == image_id))


async def wait_for_faces(request: Request, response: Response, session: Session, image: Image,
                         wait: int | None, settings: Settings) -> None:
    """`Prefer: wait=N` (N already capped at MAX_FACE_WAIT_SECONDS): hold the answer until detection is done."""
    if wait is None:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if await run_in_threadpool(_faces_status, request, image.id) != FaceStatus.PENDING:
            break
        await asyncio.sleep(min(settings.wait_poll_seconds, max(0.0, deadline - time.monotonic())))
    await run_in_threadpool(session.refresh, image)
    response.headers["Preference-Applied"] = f"wait={wait}"


def _claim_upload(session: Session, storage: Storage, settings: Settings, owner: str, upload_id: str) -> Image:
    upload = session.get(Upload, upload_id)
    if upload is None or upload.owner != owner:
        raise ApiError("upload_not_found", f"no upload {upload_id!r}")
    if upload.image_id is not None:
        raise ApiError("upload_consumed", f"upload {upload_id!r} already became image {upload.image_id!r}")
    size = storage.size(upload_key(upload_id))
    if size is None:
        raise ApiError("upload_missing", "nothing was uploaded yet: send the file to the upload URL first")
    if size > upload.max_bytes:
        storage.delete_prefix(upload_key(upload_id))
        raise ApiError("payload_too_large", f"the upload exceeds {upload.max_bytes} bytes")
    try:
        data = storage.get(upload_key(upload_id))
    except ObjectNotFound:  # deleted between the size check and the read (the expiry sweep)
        raise ApiError("upload_missing", "the uploaded file is gone: send it to the upload URL again") from None
    image = store_image(session, storage, settings, owner, data)
    consumed = session.execute(
        update(Upload).where(Upload.id == upload_id, Upload.image_id.is_(None)).values(image_id=image.id)
    )
    session.commit()
    if consumed.rowcount != 1:  # a concurrent request claimed it first
        purge_image(session, storage, image.id)
        raise ApiError("upload_consumed", f"upload {upload_id!r} was claimed concurrently")
    storage.delete_prefix(upload_key(upload_id))
    return image


@router.post("", status_code=201, response_model=ImageOut, openapi_extra=_UPLOAD_BODY, responses=_ERRORS)
async def create_image(
    request: Request, response: Response, owner: OwnerDep, session: SessionDep, storage: StorageDep,
    settings: SettingsDep,
) -> ImageOut:
    """Upload a photo (multipart field `file`). To claim a presigned upload: `POST /v1/images/from-upload`."""
    # Every header is judged before anything is stored: a refused request leaves no photo, row, task or
    # used-up upload slot behind (it used to keep the photo for 24 h under an id the client never saw).
    wait = parse_prefer_wait(request.headers.get("prefer"), settings.max_face_wait_seconds)
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise ApiError("validation_error", "the multipart field `file` is required")
        data = await file.read()
        image = await run_in_threadpool(store_image, session, storage, settings, owner, data)
    elif content_type.startswith("application/json"):
        try:
            body = ImageFromUpload.model_validate_json(await request.body())
        except ValidationError as error:
            raise RequestValidationError(error.errors(include_url=False)) from None
        image = await run_in_threadpool(_claim_upload, session, storage, settings, owner, body.upload_id)
    else:
        raise ApiError(
            "unsupported_media_type", "send multipart/form-data with a `file`, or JSON `{\"upload_id\": ...}`"
        )
    request_detection(request, image)
    await wait_for_faces(request, response, session, image, wait, settings)
    return image_out(image, request, storage, settings)


@router.post("/from-upload", status_code=201, response_model=ImageOut, responses=_ERRORS)
def create_image_from_upload(
    body: ImageFromUpload, request: Request, owner: OwnerDep, session: SessionDep, storage: StorageDep,
    settings: SettingsDep,
) -> ImageOut:  # fmt: skip
    """Turn a presigned upload (`POST /v1/uploads`, then the file sent to its URL) into an image."""
    image = _claim_upload(session, storage, settings, owner, body.upload_id)
    request_detection(request, image)
    return image_out(image, request, storage, settings)


@router.get("/{image_id}", response_model=ImageOut, responses=_ERRORS)
def get_image(
    image_id: str, request: Request, owner: OwnerDep, session: SessionDep, storage: StorageDep, settings: SettingsDep
) -> ImageOut:
    return image_out(load_image(session, owner, image_id), request, storage, settings)


@router.get("/{image_id}/file", response_class=Response,
            responses={**_ERRORS, 200: {"description": "The photo's bytes, as uploaded.",
                                        **binary_content(["image/*"])}})
def get_image_file(image_id: str, owner: OwnerDep, session: SessionDep, storage: StorageDep) -> Response:
    """The original photo bytes, as uploaded."""
    image = load_image(session, owner, image_id)
    try:
        data = storage.get(original_key(image.id))
    except ObjectNotFound:  # the row outlived its object (a purge in progress, a lost bucket): not our crash
        raise ApiError("image_file_missing", f"the stored photo of {image_id!r} is gone; upload it again") from None
    return Response(
        data,
        media_type=FORMATS[image.format].media_type,
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.delete("/{image_id}", status_code=204, response_class=Response, responses=_ERRORS)
def delete_image(image_id: str, owner: OwnerDep, session: SessionDep, storage: StorageDep) -> Response:
    """Delete the photo, its cached inversion, and every edit made from it (rows and result images)."""
    purge_image(session, storage, load_image(session, owner, image_id).id)
    return Response(status_code=204)
