"""Enqueue, claim, finish: the job table's operations.

``enqueue`` runs inside the caller's transaction, so work is queued exactly when the state
change that causes it commits. ``claim_due_jobs`` takes due jobs, and jobs whose lease
expired (their worker died), with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the
database's single writer lock makes one claimer at a time. Finishing a job checks the lease
owner, so a worker that lost its lease cannot overwrite the new owner's work.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, Table, bindparam, cast, delete, func, literal, or_, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import UtcDateTime, flush_pending
from app.jobs import wakeup
from app.jobs.models import Job, JobStatus
from app.kit.ids import new_id

ERROR_LIMIT = 1000
JOB_TABLE: Table = Job.__table__  # type: ignore[attr-defined]


async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    run_after: datetime | None = None,
    request_id: str | None = None,
    queueing_lock: str | None = None,
    max_attempts: int = 10,
) -> Job | None:
    """Queue a job in the caller's transaction. With a ``queueing_lock`` that is already held
    by a queued job, nothing is queued and ``None`` is returned. (A caller whose lock names
    something created in the same transaction, which no other job can hold, may write
    ``job_row`` itself: the fan-out does.)"""
    job = Job(
        **job_row(
            kind,
            payload,
            now=now,
            run_after=run_after,
            request_id=request_id,
            queueing_lock=queueing_lock,
            max_attempts=max_attempts,
        )
    )
    if queueing_lock is None:
        session.add(job)
    elif not await _insert_unless_locked(session, job):
        return None
    wakeup.on_enqueue(session)
    return job


def job_row(
    kind: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    run_after: datetime | None = None,
    request_id: str | None = None,
    queueing_lock: str | None = None,
    max_attempts: int = 10,
) -> dict[str, Any]:
    """Every column of a newly queued job: what ``enqueue`` writes, and what a caller that
    writes its rows in one statement (intake) inserts itself. Such a caller wakes the
    workers on commit (``app.jobs.wakeup``)."""
    return {
        "id": new_id("job"),
        "kind": kind,
        "status": JobStatus.queued,
        "payload": json.dumps(payload, separators=(",", ":")),
        "queueing_lock": queueing_lock,
        "request_id": request_id,
        "run_after": run_after or now,
        "attempts": 0,
        "max_attempts": max_attempts,
        "lease_owner": None,
        "lease_expires_at": None,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
    }


async def _insert_unless_locked(session: AsyncSession, job: Job) -> bool:
    """``INSERT ... ON CONFLICT DO NOTHING`` on the queueing lock's partial unique index: one
    statement, no savepoint, and no error when a queued job already holds the lock. Built
    once per dialect with the row as parameters: with the values inlined, SQLAlchemy walked
    every value to make the statement's cache key, on every job queued."""
    await flush_pending(session)  # the unit of work's own rows first, as an ORM insert would
    conn = await session.connection()
    values = {column.name: getattr(job, column.name) for column in JOB_TABLE.columns}
    result = await conn.execute(_insert_unless_locked_statement(conn.dialect.name), values)
    return bool(result.rowcount)


@functools.cache
def _insert_unless_locked_statement(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(JOB_TABLE).on_conflict_do_nothing(
        index_elements=["queueing_lock"], index_where=text("status = 'queued'")
    )


J_ = JOB_TABLE.c
_NOW = bindparam("b_now", type_=UtcDateTime())

# Built once: the claim runs on every worker round, so neither statement is rebuilt, and
# both run on the connection (no ORM bulk-update machinery, no session synchronisation).
_FAIL_LOST = (
    update(JOB_TABLE)
    .where(
        J_.id.in_(
            # In id order, as every multi-row write of jobs; rows a live transaction holds
            # (a late heartbeat) are left for the next round.
            select(J_.id)
            .where(
                J_.status == JobStatus.running,
                J_.lease_expires_at < _NOW,
                J_.attempts >= J_.max_attempts,
            )
            .order_by(J_.id)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(
        status=JobStatus.failed,
        last_error=literal("worker lost during attempt ")
        + cast(J_.attempts, String)
        + literal(" of ")
        + cast(J_.max_attempts, String),
        lease_owner=None,
        lease_expires_at=None,
        updated_at=_NOW,
    )
)
_CLAIM = (
    update(JOB_TABLE)
    .where(
        J_.id.in_(
            select(J_.id)
            .where(
                or_(
                    (J_.status == JobStatus.queued) & (J_.run_after <= _NOW),
                    # A lost job with attempts left; one without is _FAIL_LOST's.
                    (J_.status == JobStatus.running)
                    & (J_.lease_expires_at < _NOW)
                    & (J_.attempts < J_.max_attempts),
                )
            )
            .order_by(J_.run_after)
            .limit(bindparam("b_limit"))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(
        status=JobStatus.running,
        attempts=J_.attempts + 1,
        lease_owner=bindparam("b_owner"),
        lease_expires_at=bindparam("b_expires", type_=UtcDateTime()),
        updated_at=_NOW,
    )
    .returning(*JOB_TABLE.columns)
)


async def claim_due_jobs(
    session: AsyncSession,
    *,
    worker_id: str,
    now: datetime,
    limit: int,
    lease_seconds: float,
    fail_lost: bool = True,
) -> list[Job]:
    """Take up to ``limit`` due jobs under a lease held by ``worker_id``: one ``UPDATE ...
    WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`` (the claim is on every
    job's path, so it is one statement, not a load and a flush).

    A job whose worker died on its last allowed attempt is never claimed again (a job that
    keeps killing its worker must stop somewhere); ``fail_lost`` also marks such jobs
    failed, which a busy worker does every few seconds, not on every claim."""
    connection = await session.connection()
    if fail_lost:
        await connection.execute(_FAIL_LOST, {"b_now": now})
    claimed = await connection.execute(
        _CLAIM,
        {
            "b_now": now,
            "b_limit": limit,
            "b_owner": worker_id,
            "b_expires": now + timedelta(seconds=lease_seconds),
        },
    )
    return [Job.model_construct(**row._mapping) for row in claimed.all()]


async def extend_leases(
    session: AsyncSession,
    *,
    worker_id: str,
    job_ids: list[str],
    now: datetime,
    lease_seconds: float,
) -> None:
    """The heartbeat: push the leases of ``worker_id``'s running jobs forward. The rows are
    locked in id order first, the order every multi-row write of jobs uses (``finish_many``),
    so a heartbeat and a batch of finishes cannot deadlock on each other."""
    if not job_ids:
        return
    mine = (
        select(Job.id)
        .where(
            col(Job.id).in_(job_ids),
            col(Job.lease_owner) == worker_id,
            col(Job.status) == JobStatus.running,
        )
        .order_by(col(Job.id))
        .with_for_update()
    )
    await session.exec(
        update(Job)
        .where(col(Job.id).in_(mine.scalar_subquery()))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
    )


_FINISH_WHERE = (
    (J_.id == bindparam("b_id"))
    & (J_.lease_owner == bindparam("b_owner"))
    & (J_.status == JobStatus.running)
    & (J_.attempts == bindparam("b_attempts"))
)


async def _finish(
    session: AsyncSession, job: Job, *, worker_id: str, now: datetime, **values: Any
) -> bool:
    # Core, on the connection: the worker ends every job through here.
    statement = (
        update(JOB_TABLE)
        .where(_FINISH_WHERE)
        .values(updated_at=now, lease_owner=None, lease_expires_at=None, **values)
    )
    keys = {"b_id": job.id, "b_owner": worker_id, "b_attempts": job.attempts}
    connection = await session.connection()
    if values.get("status") != JobStatus.queued or job.queueing_lock is None:
        result = await connection.execute(statement, keys)
        return bool(result.rowcount)
    # Back to the queue (retry, release): a copy queued while this one ran may hold the
    # queueing lock. Neither may be lost, so this job gives its lock up and both stay queued.
    # (Through the session: its savepoint is only emitted for the session's own statements.)
    # (Through the session, with the values in the statement: the session's savepoint is
    # only emitted for its own statements.)
    back = (
        update(JOB_TABLE)
        .where(
            J_.id == job.id,
            J_.lease_owner == worker_id,
            J_.status == JobStatus.running,
            J_.attempts == job.attempts,
        )
        .values(updated_at=now, lease_owner=None, lease_expires_at=None, **values)
    )
    try:
        async with session.begin_nested():
            result = await session.exec(back)
    except IntegrityError:
        result = await session.exec(back.values(queueing_lock=None))
    return bool(result.rowcount)


async def mark_succeeded(session: AsyncSession, job: Job, *, worker_id: str, now: datetime) -> bool:
    return await _finish(
        session, job, worker_id=worker_id, now=now, status=JobStatus.succeeded, last_error=None
    )


_FINISH_MANY = (
    update(JOB_TABLE)
    .where(
        JOB_TABLE.c.id == bindparam("b_id"),
        JOB_TABLE.c.lease_owner == bindparam("b_owner"),
        JOB_TABLE.c.status == JobStatus.running,
        JOB_TABLE.c.attempts == bindparam("b_attempts"),
    )
    .values(
        status=JobStatus.succeeded,
        last_error=None,
        lease_owner=None,
        lease_expires_at=None,
        updated_at=bindparam("b_now", type_=UtcDateTime()),
    )
)


async def finish_many(session: AsyncSession, finished: list[Job], *, now: datetime) -> None:
    """``finish`` for many jobs of one unit of work (a coalesced batch of handlers): one
    prepared statement run for every job, each still checked against its own lease. In id
    order, as the heartbeat locks them (``extend_leases``): in any other order, the two could
    each hold a row the other waits for."""
    if not finished:
        return
    connection = await session.connection()
    await connection.execute(
        _FINISH_MANY,
        [
            {"b_id": j.id, "b_owner": j.lease_owner or "", "b_attempts": j.attempts, "b_now": now}
            for j in sorted(finished, key=lambda j: j.id)
        ],
    )


async def mark_failed(
    session: AsyncSession, job: Job, *, worker_id: str, now: datetime, error: str
) -> bool:
    return await _finish(
        session,
        job,
        worker_id=worker_id,
        now=now,
        status=JobStatus.failed,
        last_error=error[:ERROR_LIMIT],
    )


async def reschedule(
    session: AsyncSession,
    job: Job,
    *,
    worker_id: str,
    now: datetime,
    delay_seconds: float,
    error: str | None,
) -> bool:
    return await _finish(
        session,
        job,
        worker_id=worker_id,
        now=now,
        status=JobStatus.queued,
        run_after=now + timedelta(seconds=delay_seconds),
        last_error=error[:ERROR_LIMIT] if error else None,
    )


async def finish(session: AsyncSession, job: Job, *, now: datetime) -> bool:
    """Mark a job succeeded from inside its handler's unit of work (the handler then returns
    ``FINISHED``). False when the job's lease was lost meanwhile: the caller should roll back."""
    return await mark_succeeded(session, job, worker_id=job.lease_owner or "", now=now)


async def fail(session: AsyncSession, job: Job, *, now: datetime, error: str) -> bool:
    """Fail a job for good from inside its handler's unit of work."""
    return await mark_failed(session, job, worker_id=job.lease_owner or "", now=now, error=error)


async def retry_later(
    session: AsyncSession, job: Job, *, now: datetime, delay_seconds: float, error: str
) -> bool:
    """Put a job back in the queue from inside its handler's unit of work."""
    return await reschedule(
        session,
        job,
        worker_id=job.lease_owner or "",
        now=now,
        delay_seconds=delay_seconds,
        error=error,
    )


async def release(session: AsyncSession, job: Job, *, worker_id: str, now: datetime) -> bool:
    """Give a claimed job back untouched (graceful shutdown): the attempt does not count."""
    return await _finish(
        session,
        job,
        worker_id=worker_id,
        now=now,
        status=JobStatus.queued,
        run_after=now,
        attempts=job.attempts - 1,
    )


async def withdraw(session: AsyncSession, *, queueing_lock: str) -> None:
    """Take back the queued job that holds ``queueing_lock``, in the caller's transaction:
    work that is no longer wanted (a call scheduled for when a callback is late, once the
    callback came). A job already claimed is left to its handler, which re-reads its row."""
    await session.exec(
        delete(Job).where(
            col(Job.queueing_lock) == queueing_lock, col(Job.status) == JobStatus.queued
        )
    )


async def counts_by_status(session: AsyncSession) -> dict[str, int]:
    rows = await session.exec(select(Job.status, func.count()).group_by(Job.status))
    return {status: count for status, count in rows.all()}


async def oldest_waiting(session: AsyncSession, *, now: datetime) -> datetime | None:
    """Since when the longest-waiting due job has been ready to run: the backlog operators
    watch. A job queued for later (a retry in backoff, a call planned for a late callback,
    the next sweep) is not waiting yet and does not count until its ``run_after`` comes."""
    return (
        await session.exec(
            select(func.min(Job.run_after)).where(
                col(Job.status) == JobStatus.queued, col(Job.run_after) <= now
            )
        )
    ).one()
