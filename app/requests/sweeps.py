"""Periodic work on requests: expiring unverified ones."""

from __future__ import annotations

from app.jobs.models import Job
from app.jobs.registry import periodic
from app.jobs.worker import JobContext
from app.requests import service


@periodic("requests.expire_unverified", every_seconds=60)
async def expire_unverified(ctx: JobContext, job: Job) -> None:
    while True:
        async with ctx.session() as session:
            done = await service.expire_unverified(session, rt=ctx, now=ctx.clock.now())
        if done == 0:
            return
