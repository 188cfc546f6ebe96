"""`/v1/uploads`: a presigned slot so large photos go straight to storage, not through the API.

S3: a POST form whose signed policy bounds the size. Local storage has no presigning, so the slot
is an authenticated `PUT /v1/uploads/{id}` on the API itself. Either way the client then calls
`POST /v1/images {"upload_id": ...}`, which validates the bytes like a direct upload.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import OwnerDep, SessionDep, SettingsDep, StorageDep
from api.openapi import binary_content
from api.schemas import ErrorBody, UploadCreate, UploadOut
from common.errors import ApiError
from common.models import Upload, new_id, utcnow
from common.storage import LocalStorage
from common.storage_layout import upload_key

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])



@router.post("", status_code=201, response_model=UploadOut, responses={401: {"model": ErrorBody}})
def create_upload(
    request: Request,
    owner: OwnerDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    body: UploadCreate | None = None,
) -> UploadOut:
    expires = timedelta(seconds=settings.upload_url_expiry_seconds)
    upload = Upload(
        id=new_id("upl"), owner=owner, max_bytes=settings.max_upload_bytes, expires_at=utcnow() + expires
    )
    presigned = storage.presigned_upload(upload_key(upload.id), upload.max_bytes, expires)
    session.add(upload)
    session.commit()
    if presigned is None:
        return UploadOut(
            upload_id=upload.id,
            method="PUT",
            url=str(request.url_for("put_upload", upload_id=upload.id)),
            headers={"Authorization": "Bearer <your API key>", "Content-Type": "application/octet-stream"},
            expires_at=upload.expires_at,
            max_bytes=upload.max_bytes,
        )
    return UploadOut(
        upload_id=upload.id,
        method=presigned.method,
        url=presigned.url,
        fields=presigned.fields,
        headers=presigned.headers,
        expires_at=upload.expires_at,
        max_bytes=upload.max_bytes,
    )


@router.put("/{upload_id}", status_code=204, response_class=Response, responses={404: {"model": ErrorBody}},
            openapi_extra={"requestBody": {"required": True, "description": "The photo's bytes (JPEG, PNG, WebP "
                                           "or HEIC, whatever the Content-Type says: the photo is sniffed when it becomes an image), at "
                                           "most the slot's `max_bytes`.",
                                           **binary_content(["application/octet-stream"])}})
async def put_upload(
    upload_id: str, request: Request, owner: OwnerDep, session: SessionDep, storage: StorageDep
) -> Response:
    """Receive the bytes of an upload slot (local storage only; with S3 the client posts to S3)."""
    if not isinstance(storage, LocalStorage):
        raise ApiError("not_found", "with S3 storage, upload to the presigned URL instead")
    upload = await run_in_threadpool(session.get, Upload, upload_id)
    if upload is None or upload.owner != owner:
        raise ApiError("upload_not_found", f"no upload {upload_id!r}")
    if upload.image_id is not None:
        raise ApiError("upload_consumed", f"upload {upload_id!r} already became an image")
    if upload.expires_at < utcnow():
        raise ApiError("upload_expired", "the upload slot expired; ask for a new one")
    # Streamed to its file as it arrives: held whole, six maximum uploads at once cost the API ~220 MB
    # (docs/SECURITY.md, "Uploads"). A refused or broken body leaves no file (the temporary one is removed).
    received = 0
    with storage.open_write(upload_key(upload_id)) as file:
        async for chunk in request.stream():
            received += len(chunk)
            if received > upload.max_bytes:
                raise ApiError("payload_too_large", f"the upload exceeds {upload.max_bytes} bytes")
            if chunk:
                await run_in_threadpool(file.write, chunk)
        if not received:
            raise ApiError("invalid_image", "the body is empty")
    return Response(status_code=204)
