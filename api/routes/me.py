"""`DELETE /v1/me/data`: the right to erasure, in one call."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import DEV_OWNER, OwnerDep, SessionDep, StorageDep
from api.schemas import ErrorBody
from common.idempotency import scope_for
from common.retention import purge_owner

router = APIRouter(prefix="/v1/me", tags=["me"])
_ERRORS = {code: {"model": ErrorBody} for code in (401, 429)}


@router.delete("/data", status_code=204, response_class=Response, responses=_ERRORS)
async def delete_my_data(request: Request, owner: OwnerDep, session: SessionDep, storage: StorageDep) -> Response:
    """Delete every photo, inversion, edit, result, upload and webhook log entry of this account, from
    the database and the storage (running edits are canceled first). API keys stay valid."""
    settings = request.app.state.settings
    extra = (scope_for(settings.dev_api_key),) if owner == DEV_OWNER and settings.dev_api_key else ()
    await run_in_threadpool(purge_owner, session, storage, owner, extra)
    return Response(status_code=204)
