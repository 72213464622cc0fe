"""Sending an approved request to the systems that hold data.

Until connectors are registered (issue 3), no system handles any type, and the contract
says such a request completes at once with empty outcomes.
"""

from __future__ import annotations

from app.jobs.models import Job
from app.jobs.registry import handler
from app.jobs.worker import JobContext, payload_of
from app.requests import service
from app.requests.models import DsrRequest
from app.requests.states import RequestStatus


@handler(service.FAN_OUT_KIND)
async def fan_out(ctx: JobContext, job: Job) -> None:
    request_id = payload_of(job)["request_id"]
    async with ctx.session() as session:
        req = await session.get(DsrRequest, request_id, with_for_update=True)
        if req is None or req.status != RequestStatus.in_progress:
            return  # cancelled or rejected meanwhile: nothing to send
        await service.complete(session, rt=ctx, req=req, now=ctx.clock.now(), outcomes=[])
