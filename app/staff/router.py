"""Staff routes: see and steer every request. Every route needs a scope."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlmodel.ext.asyncio.session import AsyncSession

from app.connectors import dispatch
from app.connectors import service as connectors
from app.connectors.schemas import ConnectorResult
from app.deadlines import (
    NoExtension,
    UnknownRegime,
    acknowledgement_due,
    calendar_for,
    compute_deadline,
    get_regime,
)
from app.deps import Now, RuntimeDep, SessionDep
from app.errors import InvalidInput
from app.exports import service as exports
from app.jobs import service as jobs
from app.kit.clock import rfc3339, utc
from app.kit.crypto import normalise_email
from app.requests import repository, service, views
from app.requests.models import DsrRequest
from app.requests.schemas import (
    DeadlinePreview,
    ExtendIn,
    IdentityDecisionIn,
    RejectIn,
    StaffList,
    StaffRequestCreate,
    StaffView,
    Stats,
)
from app.requests.states import RequestStatus, RequestType
from app.reruns import service as reruns
from app.reruns.schemas import RerunIn, RunsOut
from app.runtime import Runtime
from app.security.staff import StaffPrincipal, require_scopes

router = APIRouter(prefix="/v1/admin", tags=["staff"])

PROBLEM: dict[str, Any] = {"model": None, "content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, Any]] = {status: PROBLEM for status in (401, 403, 404, 409, 422)}

Reader = Annotated[StaffPrincipal, Depends(require_scopes("requests:read"))]
Writer = Annotated[StaffPrincipal, Depends(require_scopes("requests:write"))]

CSV_COLUMNS = (
    "id",
    "type",
    "status",
    "channel",
    "jurisdiction",
    "received_at",
    "due_date",
    "due_at",
    "extended",
    "days_left",
    "overdue",
    "closed_at",
)


def actor(staff: StaffPrincipal) -> str:
    return f"staff:{staff.subject}"


@router.get(
    "/requests",
    response_model=StaffList,
    responses={**ERRORS, 200: {"content": {"application/json": {}, "text/csv": {}}}},
)
async def list_requests(
    request: Request,
    staff: Reader,
    rt: RuntimeDep,
    now: Now,
    status: RequestStatus | None = None,
    type: RequestType | None = None,
    overdue: bool | None = None,
    due_before: date | None = None,
    email: Annotated[str | None, Query(max_length=254)] = None,
    received_after: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
) -> StreamingResponse | dict[str, Any]:
    """Requests, newest first, filtered; ``Accept: text/csv`` streams every match as a CSV
    report (no identity values in it)."""
    if received_after is not None and received_after.tzinfo is None:
        raise InvalidInput.field(("query", "received_after"), "needs a time-zone offset")
    flt = repository.RequestFilter(
        status=status,
        type=type,
        overdue=overdue,
        due_before=due_before,
        email_index=rt.sealer.blind_index(normalise_email(email)) if email else None,
        received_after=received_after,
    )
    if "text/csv" in request.headers.get("accept", ""):
        return StreamingResponse(
            _csv(rt, flt, now),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="requests.csv"'},
        )
    async with rt.read_sessions() as session:
        rows, next_cursor = await repository.page(session, flt, now=now, limit=limit, cursor=cursor)
    return {"items": [views.list_item(rt, row, now) for row in rows], "next_cursor": next_cursor}


async def _csv(rt: Runtime, flt: repository.RequestFilter, now: datetime) -> AsyncIterator[str]:
    """The report streams after the route has returned (and its session closed): it reads
    through a session of its own, held only while it streams."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    async with rt.read_sessions() as session:
        async for req in repository.stream(session, flt, now=now):
            item = views.list_item(rt, req, now)
            writer.writerow([_cell(item[column]) for column in CSV_COLUMNS])
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()


def _cell(value: object) -> object:
    if isinstance(value, datetime):
        return rfc3339(value)
    if value is None:
        return ""
    return value


@router.post("/requests", status_code=201, response_model=StaffView, responses=ERRORS)
async def enter_request(
    body: StaffRequestCreate, staff: Writer, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """A request received by another channel (e-mail, post, phone, in person); the deadline
    runs from ``received_at``, which may be in the past."""
    if body.received_at.tzinfo is None:
        # A naive instant has no defined local day: guessing could move the deadline a day.
        raise InvalidInput.field(("body", "received_at"), "needs a time-zone offset")
    req = await service.create_staff_request(session, rt=rt, body=body, actor=actor(staff), now=now)
    await session.flush()
    return await views.staff_view(session, rt, req, now)


@router.get("/requests/{request_id}", response_model=StaffView, responses=ERRORS)
async def get_request(request_id: str, staff: Reader, rt: RuntimeDep) -> dict:
    """Everything about a request: subject, verification, the deadline and how it was
    reached, jobs and the audit trail."""
    now = rt.clock.now()  # not the ``Now`` dependency: each one costs on the hottest staff read
    async with rt.read_sessions() as session:
        read = await service.read_for_staff(session, request_id)
        return await views.staff_view(
            session, rt, read.request, now, duplicates=read.duplicates, events=read.events
        )


async def _act(
    session: AsyncSession,
    rt: Runtime,
    request_id: str,
    now: datetime,
    action: Callable[[DsrRequest], Awaitable[object]],
) -> dict[str, Any]:
    req = await service.get_for_staff(session, request_id, lock=True)
    await action(req)
    await session.flush()
    return await views.staff_view(session, rt, req, now)


@router.post("/requests/{request_id}/approve", response_model=StaffView, responses=ERRORS)
async def approve(
    request_id: str, staff: Writer, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """Approve a request waiting for review: it is sent to the connectors."""
    return await _act(
        session,
        rt,
        request_id,
        now,
        lambda req: service.approve(session, rt=rt, req=req, actor=actor(staff), now=now),
    )


@router.post("/requests/{request_id}/reject", response_model=StaffView, responses=ERRORS)
async def reject(
    request_id: str, body: RejectIn, staff: Writer, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """Refuse a request with a reason; the subject is told why and how to complain."""
    return await _act(
        session,
        rt,
        request_id,
        now,
        lambda req: service.reject(session, rt=rt, req=req, actor=actor(staff), now=now, body=body),
    )


@router.post("/requests/{request_id}/cancel", response_model=StaffView, responses=ERRORS)
async def cancel(
    request_id: str, staff: Writer, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """Cancel an open request (withdrawn through another channel)."""
    return await _act(
        session,
        rt,
        request_id,
        now,
        lambda req: service.cancel(session, rt=rt, req=req, actor=actor(staff), now=now),
    )


@router.post("/requests/{request_id}/extend", response_model=StaffView, responses=ERRORS)
async def extend(
    request_id: str, body: ExtendIn, staff: Writer, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """Extend the deadline once, before it passes (GDPR: to receipt + 3 months); the
    subject receives the reason."""
    return await _act(
        session,
        rt,
        request_id,
        now,
        lambda req: service.extend(
            session, rt=rt, req=req, actor=actor(staff), now=now, reason=body.reason
        ),
    )


@router.post("/requests/{request_id}/identity/approve", response_model=StaffView, responses=ERRORS)
async def approve_identity(
    request_id: str,
    staff: Writer,
    rt: RuntimeDep,
    session: SessionDep,
    now: Now,
    body: IdentityDecisionIn | None = None,
) -> dict:
    """Accept the subject's identity (document reviewed, or checked by other means). The
    document is deleted now; only who decided and when remains."""
    return await _act(
        session,
        rt,
        request_id,
        now,
        lambda req: service.approve_identity(session, rt=rt, req=req, actor=actor(staff), now=now),
    )


@router.post("/requests/{request_id}/identity/reject", response_model=StaffView, responses=ERRORS)
async def reject_identity(
    request_id: str,
    staff: Writer,
    rt: RuntimeDep,
    session: SessionDep,
    now: Now,
    body: IdentityDecisionIn | None = None,
) -> dict:
    """Refuse the identity proof: the request is rejected (``identity_not_verified``) and the
    document deleted."""
    return await _act(
        session,
        rt,
        request_id,
        now,
        lambda req: service.reject_identity(
            session,
            rt=rt,
            req=req,
            actor=actor(staff),
            now=now,
            note=None if body is None else body.note,
        ),
    )


@router.post(
    "/requests/{request_id}/jobs/{job_id}/retry",
    status_code=202,
    response_model=StaffView,
    responses=ERRORS,
)
async def retry_job(
    request_id: str, job_id: str, staff: Writer, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """Queue a connector job that failed for good again, with a fresh set of attempts (once
    its system is fixed)."""
    return await _act(
        session,
        rt,
        request_id,
        now,
        lambda req: dispatch.retry_job(
            session, rt=rt, req=req, job_id=job_id, actor=actor(staff), now=now
        ),
    )


@router.post(
    "/requests/{request_id}/jobs/{job_id}/complete", response_model=StaffView, responses=ERRORS
)
async def complete_job(
    request_id: str,
    job_id: str,
    body: ConnectorResult,
    staff: Writer,
    rt: RuntimeDep,
    session: SessionDep,
    now: Now,
) -> dict:
    """Enter a job's result by hand (same body as a connector result): a manual connector's
    task, or a failed job whose system was handled outside the service."""
    return await _act(
        session,
        rt,
        request_id,
        now,
        lambda req: dispatch.complete_job(
            session, rt=rt, req=req, job_id=job_id, result=body, actor=actor(staff), now=now
        ),
    )


@router.post("/requests/{request_id}/export/rebuild", response_model=StaffView, responses=ERRORS)
async def rebuild_export(
    request_id: str, staff: Writer, rt: RuntimeDep, session: SessionDep, now: Now
) -> dict:
    """Re-issue the package of a completed access or portability request (a subject whose
    link expired writes in) from the connector results still held: a fresh package, new
    retention, same download link; the subject is told by e-mail. ``export.ready`` is false
    until it is built. 409 when the results were deleted (re-run the request instead)."""
    return await _act(
        session,
        rt,
        request_id,
        now,
        lambda req: exports.rebuild(session, rt=rt, req=req, actor=actor(staff), now=now),
    )


@router.post("/requests/{request_id}/rerun", response_model=StaffView, responses=ERRORS)
async def rerun(
    request_id: str,
    staff: Writer,
    rt: RuntimeDep,
    session: SessionDep,
    now: Now,
    body: RerunIn | None = None,
) -> dict:
    """Send a completed request to the connectors that handle it now, again: it is in
    progress, then completes through the normal path (new package, completion e-mail); the
    deadline does not move. The previous run's jobs are kept (``GET .../runs``)."""
    return await _act(
        session,
        rt,
        request_id,
        now,
        lambda req: reruns.rerun(
            session,
            rt=rt,
            req=req,
            actor=actor(staff),
            now=now,
            reason=None if body is None else body.reason,
        ),
    )


@router.get("/requests/{request_id}/runs", response_model=RunsOut, responses=ERRORS)
async def runs(request_id: str, staff: Reader, rt: RuntimeDep) -> dict:
    """The runs a re-run superseded, with their jobs as they ended; the current run's jobs
    are the request's ``jobs``."""
    async with rt.read_sessions() as session:
        req = await service.get_for_staff(session, request_id)
        return await reruns.runs_view(session, req)


@router.get("/deadlines/preview", response_model=DeadlinePreview, responses=ERRORS)
async def preview_deadline(
    staff: Reader,
    rt: RuntimeDep,
    now: Now,
    received_at: datetime,
    jurisdiction: Annotated[str | None, Query(max_length=20)] = None,
) -> dict:
    """The legal clock for a receipt instant: due date, extended due date, and why."""
    if received_at.tzinfo is None:
        raise InvalidInput.field(("query", "received_at"), "needs a time-zone offset")
    code = jurisdiction or rt.settings.default_jurisdiction
    try:
        regime = get_regime(code)
    except UnknownRegime as exc:
        raise InvalidInput.field(("query", "jurisdiction"), "unknown jurisdiction") from exc
    cal, tz, at = calendar_for(rt.settings.country), rt.settings.tz, utc(received_at)
    base = compute_deadline(regime=regime, received_at=at, tz=tz, calendar=cal, now=now)
    try:
        longer = compute_deadline(
            regime=regime, received_at=at, tz=tz, calendar=cal, now=now, extended=True
        )
    except NoExtension:
        longer = None
    return {
        "jurisdiction": regime.code,
        "received_at": at,
        "due_date": base.due_date,
        "due_at": base.due_at,
        "extended_due_date": longer and longer.due_date,
        "extended_due_at": longer and longer.due_at,
        "acknowledgement_due_date": acknowledgement_due(
            regime=regime, received_at=at, tz=tz, calendar=cal
        ),
        "steps": base.explanation,
    }


@router.get("/stats", response_model=Stats, responses=ERRORS)
async def stats(staff: Reader, rt: RuntimeDep, now: Now) -> dict:
    """Counts by status and type, overdue, due within 7 days, median days to complete, and
    the job queue's state."""
    today = now.astimezone(rt.settings.tz).date()
    async with rt.read_sessions() as session:
        figures = await repository.stats(session, now=now, today=today)
        return {
            **figures,
            "jobs_by_status": await connectors.count_by_status(session),
            "oldest_waiting_job_at": await connectors.oldest_unfinished(session),
            "engine_jobs_by_status": await jobs.counts_by_status(session),
            "oldest_queued_engine_job_at": await jobs.oldest_waiting(session, now=now),
        }
