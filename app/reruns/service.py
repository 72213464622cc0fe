"""Re-running a completed request: its connectors (those that handle it now) are asked
again, and it completes again through the normal path (fan-out, settling, a new package for
access and portability, the completion e-mail). The legal deadline does not move.

The finished run is kept as history (``RequestRun``) and its connector jobs leave
``connector_job``, so the fan-out creates fresh jobs through its public entry point
(``queue_fan_out``) without knowing about runs. The previous answer goes at once (the
re-run exists because it is to be replaced): its package and the stored records it came
from are deleted, and ``export`` is null until the new run's package is ready.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import service as audit
from app.connectors import results
from app.connectors import service as connectors
from app.db import after_commit
from app.errors import InvalidTransition
from app.exports import service as exports
from app.kit.clock import rfc3339, utc
from app.kit.ids import new_id
from app.requests import service as requests
from app.requests.models import DsrRequest
from app.requests.states import RequestStatus, check_transition
from app.reruns.models import RequestRun
from app.runtime import Runtime


def _instant(value: datetime) -> str:
    return rfc3339(utc(value))


async def current_run(session: AsyncSession, request_id: str) -> int:
    """1 for a request never re-run; one more for each re-run."""
    last = (
        await session.exec(
            select(func.max(RequestRun.run)).where(col(RequestRun.request_id) == request_id)
        )
    ).one()
    return (last or 0) + 1


async def rerun(
    session: AsyncSession,
    *,
    rt: Runtime,
    req: DsrRequest,
    actor: str,
    now: datetime,
    reason: str | None,
) -> DsrRequest:
    """Send the (locked) completed request to its connectors again."""
    if req.status != RequestStatus.completed:
        # Open requests are still running (or not yet sent); closed ones got no answer.
        raise InvalidTransition(
            f"only a completed request can be re-run; this one is {req.status}",
            extra={"current_status": req.status},
        )
    target = check_transition(req.status, RequestStatus.in_progress, action="re-run")
    if await exports.assembly_pending(session, req.id):
        # That assembly would take the re-run's first, empty state for its answer.
        raise InvalidTransition(
            "its package is being rebuilt; re-run it once export.ready is true",
            extra={"current_status": req.status},
        )
    package = await exports.package_for(session, req.id)
    run = await current_run(session, req.id)
    pairs = await connectors.jobs_for_request(session, req.id)
    session.add(
        RequestRun(
            id=new_id("run"),
            request_id=req.id,
            run=run,
            completed_at=req.closed_at,
            superseded_at=now,
            superseded_by=actor,
            reason=reason,
            jobs=json.dumps(
                [connectors.job_view(cj, connector) for cj, connector in pairs], default=_instant
            ),
        )
    )
    files = [entry["file"] for cj, _ in pairs for entry in connectors.data_files_of(cj)]
    # Files go once the re-run is committed: a failed commit leaves the answer whole.
    after_commit(session, f"rerun.files.{req.id}", lambda: results.delete(rt, files))
    await connectors.delete_jobs(session, req.id)
    if package is not None:
        await exports.discard(session, rt, package)
    req.status, req.updated_at, req.closed_at = target, now, None
    session.add(req)
    await audit.record(
        session,
        actor=actor,
        action="request.rerun",
        now=now,
        request_id=req.id,
        details={
            "run": run + 1,
            # The chain is append-only: free text (which may name people) stays out of it;
            # the reason is kept with the run's history.
            "reason_given": bool(reason),
            "previous_jobs": [cj.id for cj, _ in pairs],
            "previous_package_id": package and package.id,
        },
    )
    await requests.queue_fan_out(session, request_id=req.id, now=now)
    return req


async def superseded_job(session: AsyncSession, job_id: str) -> dict[str, Any] | None:
    """The job view (as kept in the run's history) of the connector job ``job_id``, if a
    re-run superseded it. Its connector may still call back (a late answer to a 202, a
    retry), and is told what any finished job's connector is told. Re-runs are rare and so
    is this lookup (a callback for a job that is not in ``connector_job``): a search of the
    histories' text, then an exact match in the one that names the id."""
    pattern = '%"' + _escape_like(job_id) + '"%'
    histories = (
        await session.exec(
            select(RequestRun.jobs).where(col(RequestRun.jobs).like(pattern, escape="\\"))
        )
    ).all()
    for jobs in histories:
        for view in json.loads(jobs):
            if view.get("id") == job_id:
                return view
    return None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def runs_view(session: AsyncSession, req: DsrRequest) -> dict[str, Any]:
    """The runs a re-run superseded, oldest first; the current run's jobs are the staff
    view's ``jobs``."""
    rows = (
        await session.exec(
            select(RequestRun)
            .where(col(RequestRun.request_id) == req.id)
            .order_by(col(RequestRun.run))
        )
    ).all()
    return {
        "current_run": rows[-1].run + 1 if rows else 1,
        "runs": [
            {
                "run": row.run,
                "completed_at": row.completed_at,
                "superseded_at": row.superseded_at,
                "superseded_by": row.superseded_by,
                "reason": row.reason,
                "jobs": json.loads(row.jobs),
            }
            for row in rows
        ],
    }
