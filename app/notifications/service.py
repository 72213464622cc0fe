"""Queue e-mails in the caller's transaction and deliver them from a job.

A message is rendered when queued (a template error fails the state change, loudly, not the
delivery, silently), sealed with the service key (it may hold a verification code), and
delivered by the ``notifications.deliver`` job over SMTP or as an ``.eml`` file. Failed
deliveries are retried with backoff for hours; the content is dropped once delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy import select as sa_select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.jobs import service as jobs
from app.jobs.batching import Coalescer, coalescer
from app.jobs.models import Job
from app.jobs.registry import FINISHED, JobError, handler
from app.jobs.service import JOB_TABLE
from app.jobs.worker import JobContext, payload_of
from app.kit.crypto import Sealer
from app.kit.ids import new_id
from app.notifications.models import OutboxMessage, OutboxStatus
from app.notifications.sender import DeliveryError, OutgoingMail, deliver
from app.notifications.templates import render

log = logging.getLogger("dsr.notifications")

DELIVER_KIND = "notifications.deliver"
DELIVERY_ATTEMPTS = 60  # with a 10-minute cap and full jitter: about five hours of trying
OUTBOX_TABLE: Table = OutboxMessage.__table__  # type: ignore[attr-defined]


async def queue_mail(
    session: AsyncSession,
    *,
    settings: Settings,
    sealer: Sealer,
    now: datetime,
    to: str,
    template: str,
    language: str | None,
    context: Mapping[str, object],
    request_id: str | None = None,
) -> OutboxMessage:
    values = _message_values(
        settings=settings,
        sealer=sealer,
        now=now,
        to=to,
        template=template,
        language=language,
        context=context,
        request_id=request_id,
    )
    message = OutboxMessage(**values)
    message_id = message.id
    session.add(message)
    await jobs.enqueue(
        session,
        DELIVER_KIND,
        {"message_id": message_id},
        now=now,
        request_id=request_id,
        max_attempts=DELIVERY_ATTEMPTS,
    )
    return message


def _message_values(
    *,
    settings: Settings,
    sealer: Sealer,
    now: datetime,
    to: str,
    template: str,
    language: str | None,
    context: Mapping[str, object],
    request_id: str | None,
) -> dict[str, Any]:
    rendered = render(
        template, language=language, default_language=settings.default_language, context=context
    )
    message_id = new_id("msg")
    sealed = sealer.seal_json(
        {"to": to, "subject": rendered.subject, "text": rendered.text}, context=message_id
    )
    return {
        "id": message_id,
        "request_id": request_id,
        "template": template,
        "language": rendered.language,
        "status": OutboxStatus.pending.value,
        "sealed": sealed,
        "attempts": 0,
        "last_error": None,
        "created_at": now,
        "sent_at": None,
    }


def mail_rows(
    *,
    settings: Settings,
    sealer: Sealer,
    now: datetime,
    to: str,
    template: str,
    language: str | None,
    context: Mapping[str, object],
    request_id: str | None = None,
) -> list[tuple[Table, dict[str, Any]]]:
    """What ``queue_mail`` writes, as rows for a caller that writes its rows in one statement
    (intake): the outbox message and its delivery job (``jobs.job_row``). The caller wakes the
    workers (``app.jobs.wakeup``) on commit."""
    message = _message_values(
        settings=settings,
        sealer=sealer,
        now=now,
        to=to,
        template=template,
        language=language,
        context=context,
        request_id=request_id,
    )
    job = jobs.job_row(
        DELIVER_KIND,
        {"message_id": message["id"]},
        now=now,
        request_id=request_id,
        max_attempts=DELIVERY_ATTEMPTS,
    )
    return [(OUTBOX_TABLE, message), (JOB_TABLE, job)]


@handler(DELIVER_KIND)
async def deliver_message(ctx: JobContext, job: Job) -> object:
    """Deliver one queued message. The mails a burst of intakes queues are delivered side by
    side, so their reads share one statement and their "sent" marks one transaction with
    their jobs' ends (``app.jobs.batching``): per mail, the database sees a fraction of a
    statement instead of three transactions."""
    message_id = payload_of(job)["message_id"]
    found = await _reads(ctx).submit(message_id)
    if found is None or found.status == OutboxStatus.sent or found.sealed is None:
        return None
    content = ctx.sealer.open_json(found.sealed, context=message_id)
    mail = OutgoingMail(
        message_id=message_id,
        to=content["to"],
        subject=content["subject"],
        text=content["text"],
        language=found.language,
    )
    settings = ctx.settings
    try:
        await deliver(
            mail,
            smtp_url=settings.smtp_url,
            mail_dir=settings.mail_dir,
            mail_from=settings.mail_from,
            connections=ctx.smtp,
        )
    except DeliveryError as exc:
        async with ctx.session() as session:
            message = await session.get(OutboxMessage, message_id)
            if message is not None:
                message.attempts += 1
                message.last_error = str(exc)[:500]
                # A 5xx for this very message gets the same answer every time: stop now.
                if exc.permanent or job.attempts >= job.max_attempts:
                    message.status = OutboxStatus.failed
                session.add(message)
        raise JobError(f"delivery failed: {exc}", permanent=exc.permanent) from exc
    await _sent(ctx).submit(job)
    log.info("notifications.sent", extra={"message_id": message_id})
    return FINISHED


def _reads(ctx: JobContext) -> Coalescer[str, Any]:
    async def many(message_ids: list[str]) -> list[Any]:
        return await _read_many(ctx, message_ids)

    async def one(message_id: str) -> Any:
        return (await _read_many(ctx, [message_id]))[0]

    return coalescer(ctx.extras, "notifications.read", many, one)


def _sent(ctx: JobContext) -> Coalescer[Job, None]:
    async def many(sent: list[Job]) -> list[None]:
        await _mark_sent(ctx, sent)
        return [None] * len(sent)

    async def one(job: Job) -> None:
        await _mark_sent(ctx, [job])

    return coalescer(ctx.extras, "notifications.sent", many, one)


async def _read_many(ctx: JobContext, message_ids: list[str]) -> list[Any]:
    # One plain read, outside a transaction (a read session: autocommit on PostgreSQL).
    async with ctx.read_sessions() as session:
        conn = await session.connection()
        rows = (await conn.execute(_PENDING_CONTENT, {"ids": message_ids})).all()
    by_id = {row.id: row for row in rows}
    return [by_id.get(message_id) for message_id in message_ids]


async def _mark_sent(ctx: JobContext, sent: list[Job]) -> None:
    """The content goes as soon as it is delivered; the jobs end in the same transaction."""
    now = ctx.clock.now()
    async with ctx.session() as session:
        conn = await session.connection()
        ids = [payload_of(job)["message_id"] for job in sent]
        await conn.execute(_MARK_SENT, {"ids": ids, "delivered_at": now})
        await jobs.finish_many(session, sent, now=now)


_PENDING_CONTENT = sa_select(
    OUTBOX_TABLE.c.id, OUTBOX_TABLE.c.status, OUTBOX_TABLE.c.sealed, OUTBOX_TABLE.c.language
).where(OUTBOX_TABLE.c.id.in_(bindparam("ids", expanding=True)))

_MARK_SENT = (
    update(OUTBOX_TABLE)
    .where(OUTBOX_TABLE.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=OutboxStatus.sent.value,
        sent_at=bindparam("delivered_at"),
        attempts=OUTBOX_TABLE.c.attempts + 1,
        last_error=None,
        sealed=None,
    )
)
