"""Connector routes: the registry (staff, scope ``connectors:write``) and the callbacks and
uploads connectors send back (authenticated by their Standard Webhooks signature)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from app.connectors import dispatch, signing
from app.connectors import service as registry
from app.connectors.schemas import (
    CallbackAccepted,
    ConnectorCreate,
    ConnectorCreated,
    ConnectorList,
    ConnectorOut,
    ConnectorPatch,
    UploadAccepted,
)
from app.deps import Now, RuntimeDep, SessionDep
from app.errors import Unauthorized
from app.security.staff import StaffPrincipal, require_scopes

PROBLEM: dict[str, Any] = {"model": None, "content": {"application/problem+json": {}}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: PROBLEM for status in statuses}


registry_router = APIRouter(prefix="/v1/admin/connectors", tags=["connectors"])
callbacks_router = APIRouter(prefix="/v1/connector-callbacks", tags=["connector protocol"])

Admin = Annotated[StaffPrincipal, Depends(require_scopes("connectors:write"))]
STAFF_ERRORS = _errors(401, 403, 404, 409, 422)


def _actor(staff: StaffPrincipal) -> str:
    return f"staff:{staff.subject}"


@registry_router.post("", status_code=201, response_model=ConnectorCreated, responses=STAFF_ERRORS)
async def create_connector(
    body: ConnectorCreate, staff: Admin, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """Register a system that holds personal data. The answer carries its signing secret,
    shown this once: store it in the connector."""
    connector, secret = await registry.create(
        session, rt=rt, body=body, actor=_actor(staff), now=now
    )
    return {**registry.view(connector, now=now), "signing_secret": secret}


@registry_router.get("", response_model=ConnectorList, responses=STAFF_ERRORS)
async def list_connectors(
    staff: Admin, rt: RuntimeDep, now: Now, include_deleted: bool = False
) -> dict:
    async with rt.read_sessions() as session:
        connectors = await registry.list_all(session, include_deleted=include_deleted)
    return {"items": [registry.view(c, now=now) for c in connectors]}


@registry_router.get("/{connector_id}", response_model=ConnectorOut, responses=STAFF_ERRORS)
async def get_connector(connector_id: str, staff: Admin, rt: RuntimeDep, now: Now) -> dict:
    async with rt.read_sessions() as session:
        return registry.view(await registry.get(session, connector_id), now=now)


@registry_router.patch("/{connector_id}", response_model=ConnectorOut, responses=STAFF_ERRORS)
async def update_connector(
    connector_id: str,
    body: ConnectorPatch,
    staff: Admin,
    rt: RuntimeDep,
    session: SessionDep,
    now: Now,
) -> dict:
    connector = await registry.get(session, connector_id, for_update=True)
    await registry.update(
        session, rt=rt, connector=connector, body=body, actor=_actor(staff), now=now
    )
    return registry.view(connector, now=now)


@registry_router.delete(
    "/{connector_id}", status_code=204, response_class=Response, responses=STAFF_ERRORS
)
async def delete_connector(connector_id: str, staff: Admin, session: SessionDep, now: Now) -> None:
    """Delete a connector; one with history is disabled and kept, so past answers stay
    explainable."""
    connector = await registry.get(session, connector_id, for_update=True)
    await registry.remove(session, connector=connector, actor=_actor(staff), now=now)


@registry_router.post(
    "/{connector_id}/rotate-secret", response_model=ConnectorCreated, responses=STAFF_ERRORS
)
async def rotate_secret(
    connector_id: str, staff: Admin, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """A new signing secret, shown once. The previous one stays valid for callbacks (and
    outgoing calls carry both signatures) for ``DSR_SECRET_GRACE_HOURS``."""
    connector = await registry.get(session, connector_id, for_update=True)
    secret = await registry.rotate_secret(
        session, rt=rt, connector=connector, actor=_actor(staff), now=now
    )
    return {**registry.view(connector, now=now), "signing_secret": secret}


# --- connector -> service ------------------------------------------------------------------


def _signature_refused(exc: dispatch.BadCallback | signing.BadSignature) -> Unauthorized:
    return Unauthorized(f"callback refused: {exc}", headers={})


@callbacks_router.post(
    "/{job_id}", response_model=CallbackAccepted, responses=_errors(401, 404, 409, 413, 422)
)
async def connector_callback(job_id: str, request: Request, rt: RuntimeDep) -> dict:
    """A connector's result for a job it answered with 202, signed like the call (Standard
    Webhooks). Checked over the raw body before parsing; a repeated ``webhook-id`` is answered
    as the first time and not applied twice. Unsigned or stale calls are refused before
    their body is read."""
    try:
        signing.check_headers(request.headers)
    except signing.BadSignature as exc:
        raise _signature_refused(exc) from None
    body = await request.body()
    try:
        return await dispatch.accept_callback(rt, job_id=job_id, body=body, headers=request.headers)
    except dispatch.BadCallback as exc:
        raise _signature_refused(exc) from None


@callbacks_router.put(
    "/{job_id}/data",
    response_model=UploadAccepted,
    responses=_errors(401, 404, 409, 413, 415, 422),
)
async def connector_upload(job_id: str, request: Request, rt: RuntimeDep) -> dict:
    """A connector's data for a job, streamed (``application/json`` or
    ``application/x-ndjson``, up to ``DSR_UPLOAD_MAX_BYTES``): written encrypted as it
    arrives, never held in memory. The signature covers the streamed body; a bad one
    discards the file."""
    try:
        return await dispatch.accept_upload(
            rt,
            job_id=job_id,
            headers=request.headers,
            content_type=request.headers.get("content-type", ""),
            chunks=request.stream(),
        )
    except dispatch.BadCallback as exc:
        raise _signature_refused(exc) from None
