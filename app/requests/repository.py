"""Queries over requests for staff: filtered, cursor-paginated lists and statistics."""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from app.kit.clock import utc
from app.requests.models import DsrRequest
from app.requests.states import OPEN, RequestStatus


@dataclass(frozen=True)
class RequestFilter:
    status: RequestStatus | None = None
    type: str | None = None
    overdue: bool | None = None
    due_before: date | None = None
    email_index: str | None = None
    received_after: datetime | None = None


def _filtered(
    query: SelectOfScalar[DsrRequest], flt: RequestFilter, now: datetime
) -> SelectOfScalar[DsrRequest]:
    if flt.status is not None:
        query = query.where(col(DsrRequest.status) == flt.status)
    if flt.type is not None:
        query = query.where(col(DsrRequest.type) == flt.type)
    if flt.overdue is True:
        query = query.where(col(DsrRequest.status).in_(list(OPEN)), col(DsrRequest.due_at) < now)
    elif flt.overdue is False:
        query = query.where(
            (col(DsrRequest.status).not_in(list(OPEN))) | (col(DsrRequest.due_at) >= now)
        )
    if flt.due_before is not None:
        query = query.where(col(DsrRequest.due_date) <= flt.due_before)
    if flt.email_index is not None:
        query = query.where(col(DsrRequest.email_index) == flt.email_index)
    if flt.received_after is not None:
        query = query.where(col(DsrRequest.received_at) >= flt.received_after)
    return query


async def page(
    session: AsyncSession, flt: RequestFilter, *, now: datetime, limit: int, cursor: str | None
) -> tuple[list[DsrRequest], str | None]:
    """Newest first (ids are time-ordered); the cursor is the last id of the previous page."""
    query = _filtered(select(DsrRequest), flt, now)
    if cursor:
        query = query.where(col(DsrRequest.id) < cursor)
    rows = list(
        (await session.exec(query.order_by(col(DsrRequest.id).desc()).limit(limit + 1))).all()
    )
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


async def stream(
    session: AsyncSession, flt: RequestFilter, *, now: datetime, batch: int = 1000
) -> AsyncIterator[DsrRequest]:
    cursor = None
    while True:
        rows, cursor = await page(session, flt, now=now, limit=batch, cursor=cursor)
        for row in rows:
            yield row
        if cursor is None:
            return


async def stats(session: AsyncSession, *, now: datetime, today: date) -> dict[str, object]:
    by_status = dict(
        (
            await session.exec(select(DsrRequest.status, func.count()).group_by(DsrRequest.status))
        ).all()
    )
    by_type = dict(
        (await session.exec(select(DsrRequest.type, func.count()).group_by(DsrRequest.type))).all()
    )
    open_statuses = list(OPEN)
    overdue = (
        await session.exec(
            select(func.count())
            .select_from(DsrRequest)
            .where(col(DsrRequest.status).in_(open_statuses), col(DsrRequest.due_at) < now)
        )
    ).one()
    due_soon = (
        await session.exec(
            select(func.count())
            .select_from(DsrRequest)
            .where(
                col(DsrRequest.status).in_(open_statuses),
                col(DsrRequest.due_at) >= now,
                col(DsrRequest.due_date) <= today + timedelta(days=7),
            )
        )
    ).one()
    recent = (
        await session.exec(
            select(DsrRequest.received_at, DsrRequest.closed_at)
            .where(col(DsrRequest.status) == RequestStatus.completed)
            .order_by(col(DsrRequest.id).desc())
            .limit(10_000)
        )
    ).all()
    durations = [
        (utc(closed) - utc(received)).total_seconds() / 86400
        for received, closed in recent
        if closed is not None
    ]
    return {
        "by_status": by_status,
        "by_type": by_type,
        "open": sum(count for status, count in by_status.items() if status in OPEN),
        "overdue": overdue,
        "due_within_7_days": due_soon,
        "median_days_to_complete": round(statistics.median(durations), 2) if durations else None,
    }
