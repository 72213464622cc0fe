"""The reminder sweep: staff hear about open requests as their deadline comes near (by
default 7 and 2 days before), once per threshold, as audit events and optionally e-mail."""

from __future__ import annotations

from datetime import timedelta

from app.audit import service as audit
from app.deadlines.periods import reminders_due
from app.jobs.models import Job
from app.jobs.registry import periodic
from app.jobs.worker import JobContext
from app.notifications import service as mail
from app.requests import service as requests

REMIND_KIND = "deadlines.remind"


@periodic(REMIND_KIND, every_seconds=300)
async def remind(ctx: JobContext, job: Job) -> None:
    settings, now = ctx.settings, ctx.clock.now()
    thresholds = sorted(set(settings.reminder_days), reverse=True)
    if not thresholds:
        return
    horizon = now.astimezone(settings.tz).date() + timedelta(days=max(thresholds))
    async with ctx.session() as session:
        for req in await requests.open_due_by(session, horizon=horizon):
            sent = {int(x) for x in req.reminders_sent.split(",") if x}
            due = reminders_due(
                due_date=req.due_date,
                now=now,
                tz=settings.tz,
                thresholds=thresholds,
                already_sent=sent,
            )
            if not due:
                continue
            req.reminders_sent = ",".join(str(x) for x in sorted(sent | set(due)))
            session.add(req)
            days = (req.due_date - now.astimezone(settings.tz).date()).days
            await audit.record(
                session,
                actor="system",
                action="deadline.reminder",
                now=now,
                request_id=req.id,
                details={
                    "thresholds": due,
                    "days_left": days,
                    "due_date": req.due_date.isoformat(),
                },
            )
            if settings.staff_email:
                await mail.queue_mail(
                    session,
                    settings=settings,
                    sealer=ctx.sealer,
                    now=now,
                    to=settings.staff_email,
                    template="staff_reminder",
                    language=None,
                    request_id=req.id,
                    context={
                        "request_id": req.id,
                        "request_type": req.type,
                        "status_url": "",
                        "received_date": req.received_at.astimezone(settings.tz).date(),
                        "due_date": req.due_date,
                        "organisation": settings.organisation,
                        "days_left": days,
                    },
                )
