"""`DELETE /v1/me/data`: the right to erasure, in one call."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from api.auth import DEV_OWNER
from api.deps import PrincipalDep, SessionDep, StorageDep
from api.schemas import ErrorBody
from common.retention import purge_owner

router = APIRouter(prefix="/v1/me", tags=["me"])
_ERRORS = {code: {"model": ErrorBody} for code in (401, 429)}


@router.delete("/data", status_code=204, response_class=Response, responses=_ERRORS)
async def delete_my_data(principal: PrincipalDep, session: SessionDep, storage: StorageDep) -> Response:
    """Delete every photo, inversion, edit, result, upload and webhook log entry of this account, from
    the database and the storage (running edits are canceled first). API keys stay valid."""
    # The dev key has no row to find its idempotency scope by.
    extra = (principal.key_hash,) if principal.owner == DEV_OWNER else ()
    await run_in_threadpool(purge_owner, session, storage, principal.owner, extra)
    return Response(status_code=204)
