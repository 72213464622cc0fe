"""The job that links recorded events into the chain, every second, on whichever worker
takes it (the queueing lock keeps one queued at a time)."""

from __future__ import annotations

from app.audit import service
from app.jobs.models import Job
from app.jobs.registry import periodic
from app.jobs.worker import JobContext

LINK_KIND = "audit.link"


@periodic(LINK_KIND, every_seconds=1)
async def link_events(ctx: JobContext, job: Job) -> None:
    await service.link_all(ctx.session)
