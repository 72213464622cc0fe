"""The connector call's hot path, batched: starts and finishes of concurrent calls share
transactions.

A call used to cost three or four transactions and about 17 statements of its own, and the
worker spent most of its CPU building and running them. Here the calls the worker started
in the same moment are started together (one ``SELECT ... FOR UPDATE`` of their connector
jobs, one prepared ``UPDATE`` run for each, one read of their requests, one commit) and the
calls that got a result in the same moment are finished together (the same, plus one
multi-row insert of their audit events, one ``UPDATE`` of their engine jobs and one check
per request of whether it is the last). The statements are built once, at import.

Only the common cases are batched; the rest (a job that became manual or disabled, a 202,
an error) takes the unbatched path in ``dispatch``. A batch that fails is re-run item by
item through that path, so nothing depends on the batch as a whole succeeding. Rows are
locked in id order, so two batches (two workers) cannot deadlock on each other.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, bindparam, select, update

from app.audit import service as audit
from app.connectors import results
from app.connectors.models import Connector, ConnectorJob, ConnectorMode
from app.connectors.models import ConnectorJobStatus as J
from app.db import UtcDateTime
from app.jobs import service as jobs
from app.jobs.batching import coalescer
from app.jobs.models import Job
from app.requests.models import DsrRequest
from app.runtime import Runtime

if TYPE_CHECKING:
    from app.connectors.dispatch import _Call, _Prepared

CJ: Table = ConnectorJob.__table__  # type: ignore[attr-defined]
REQ: Table = DsrRequest.__table__  # type: ignore[attr-defined]
log = logging.getLogger("dsr.connectors")

MAX_BATCH = 64
_NOW = bindparam("b_now", type_=UtcDateTime())

_START_PICK = (
    select(CJ.c.id, CJ.c.request_id, CJ.c.connector_id, CJ.c.status, CJ.c.callback_deadline)
    .where(CJ.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(CJ.c.id)
    .with_for_update()
)
_START_MARK = (
    update(CJ)
    .where(CJ.c.id == bindparam("b_id"))
    .values(
        status=J.running,
        attempts=CJ.c.attempts + 1,
        engine_job_id=bindparam("b_job"),
        updated_at=_NOW,
    )
)
_FACTS = select(
    REQ.c.id, REQ.c.type, REQ.c.status, REQ.c.due_at, REQ.c.subject_sealed, REQ.c.content_sealed
).where(REQ.c.id.in_(bindparam("ids", expanding=True)))
_FINISH_PICK = (
    select(CJ.c.id, CJ.c.request_id, CJ.c.engine_job_id, CJ.c.data_files)
    .where(CJ.c.id.in_(bindparam("ids", expanding=True)), CJ.c.status == J.running)
    .order_by(CJ.c.id)
    .with_for_update()
)
_FINISH_MARK = (
    update(CJ)
    .where(CJ.c.id == bindparam("b_id"))
    .values(
        status=J.succeeded,
        outcome=bindparam("b_outcome"),
        retained=bindparam("b_retained"),
        message_sealed=bindparam("b_message"),
        finished_by=bindparam("b_by"),
        data_files=bindparam("b_files"),
        callback_deadline=None,
        updated_at=_NOW,
        finished_at=_NOW,
    )
)
_UNFINISHED = (
    select(CJ.c.request_id)
    .where(CJ.c.request_id.in_(bindparam("ids", expanding=True)), CJ.c.status != J.succeeded)
    .distinct()
)


def _wants_call(status: str, callback_deadline: datetime | None, now: datetime) -> bool:
    """``dispatch._wants_call`` on a row already read: queued, running (a re-run after a
    crash), or waiting for a callback that is late."""
    if status in (J.queued, J.running):
        return True
    return (
        status == J.waiting_callback and callback_deadline is not None and callback_deadline <= now
    )


# --- start ------------------------------------------------------------------------------------

StartItem = tuple[Job, str]


async def start(rt: Runtime, job: Job, cj_id: str) -> _Call | None:
    """Count the attempt and build the signed call; None when there is nothing to call (the
    engine job is then finished)."""
    from app.connectors import dispatch

    async def many(items: list[StartItem]) -> list[_Call | Exception | None]:
        return await _start_many(rt, items)

    async def one(item: StartItem) -> _Call | Exception | None:
        return await dispatch._start_call(rt, *item)

    started = await coalescer(rt.extras, "connectors.start", many, one, max_batch=MAX_BATCH).submit(
        (job, cj_id)
    )
    if isinstance(started, Exception):
        raise started  # this call's own failure after the batch committed
    return started


async def _start_many(rt: Runtime, items: list[StartItem]) -> list[_Call | Exception | None]:
    from app.connectors import dispatch

    now = rt.clock.now()
    to_call: list[tuple[int, Any, Connector]] = []
    async with rt.session() as session:
        connection = await session.connection()
        picked = await connection.execute(_START_PICK, {"ids": sorted({c for _, c in items})})
        rows = {row.id: row for row in picked}
        wanted: list[tuple[int, Any]] = []
        requests: dict[str, Any] = {}
        finished: list[Job] = []
        taken: set[str] = set()
        for i, (job, cj_id) in enumerate(items):
            row = rows.get(cj_id)
            # A second engine job for the same connector job (a retry's copy) is not called
            # while the first one is: it ends here and the first one carries the call.
            if (
                row is None
                or cj_id in taken
                or not _wants_call(row.status, row.callback_deadline, now)
            ):
                finished.append(job)
                continue
            taken.add(cj_id)
            wanted.append((i, row))
        if wanted:
            await connection.execute(
                _START_MARK,
                [{"b_id": row.id, "b_job": items[i][0].id, "b_now": now} for i, row in wanted],
            )
            facts = await connection.execute(
                _FACTS, {"ids": sorted({row.request_id for _, row in wanted})}
            )
            requests = {req.id: req for req in facts}
        for i, row in wanted:
            req = requests[row.request_id]
            connector = await dispatch._connector(rt, session, row.connector_id)
            problem = dispatch._why_not_callable(rt, connector, req.status)
            if problem is None and connector.mode == ConnectorMode.webhook:
                to_call.append((i, req, connector))
                continue
            await dispatch.not_callable(session, rt, req, row.id, connector, problem, now=now)
            finished.append(items[i][0])
        await jobs.finish_many(session, finished, now=now)
    # Committed: the attempts are counted. Bodies and signatures are CPU work, done outside,
    # each call on its own: a failure here is that call's (its handler fails it as before),
    # never the batch's, whose item-by-item redo would count every attempt a second time.
    out: list[_Call | Exception | None] = [None] * len(items)
    subjects: dict[str, dict[str, Any]] = {}
    for i, req, connector in to_call:
        try:
            subject = subjects.get(req.id)
            if subject is None:
                subject = subjects[req.id] = rt.sealer.open_json(req.subject_sealed, context=req.id)
            out[i] = dispatch.build_call(rt, req, items[i][1], connector, now=now, subject=subject)
        except Exception as exc:
            out[i] = exc
    return out


# --- finish -----------------------------------------------------------------------------------

FinishItem = tuple[Job, str, Connector, "_Prepared"]


async def finish(
    rt: Runtime, job: Job, cj_id: str, connector: Connector, prepared: _Prepared
) -> None:
    """Record a call's result (status ``completed``) and finish its engine job; queue the
    request's settle when no other job of it is left unfinished."""
    from app.connectors import dispatch

    async def many(items: list[FinishItem]) -> list[None]:
        await _finish_many(rt, items)
        return [None] * len(items)

    async def one(item: FinishItem) -> None:
        job, cj_id, connector, prepared = item
        await dispatch._finish_with_result(rt, job, cj_id, connector, prepared, now=rt.clock.now())

    await coalescer(rt.extras, "connectors.finish", many, one, max_batch=MAX_BATCH).submit(
        (job, cj_id, connector, prepared)
    )


async def _finish_many(rt: Runtime, items: list[FinishItem]) -> None:
    from app.connectors import dispatch

    now = rt.clock.now()
    late: list[str] = []
    touched: set[str] = set()
    async with rt.session() as session:
        connection = await session.connection()
        picked = await connection.execute(_FINISH_PICK, {"ids": sorted({i[1] for i in items})})
        rows = {row.id: row for row in picked}
        marks: list[dict[str, Any]] = []
        for job, cj_id, connector, prepared in items:
            row = rows.get(cj_id)
            if row is None or row.engine_job_id != job.id:
                # A callback, staff or the sweep settled it meanwhile: this answer is late.
                late.extend(prepared.file_names)
                continue
            result, by = prepared.result, f"connector:{connector.id}"
            retained = [r.model_dump(mode="json") for r in result.retained]
            # The row is locked: uploads that came while the call ran are kept.
            files = (json.loads(row.data_files) if row.data_files else []) + prepared.data_files
            marks.append(
                {
                    "b_id": cj_id,
                    "b_outcome": result.outcome,
                    "b_retained": json.dumps(retained, ensure_ascii=False) if retained else None,
                    "b_message": rt.sealer.seal(result.message.encode(), context=cj_id)
                    if result.message
                    else None,
                    "b_by": by,
                    "b_files": json.dumps(files) if files else None,
                    "b_now": now,
                }
            )
            await audit.record(
                session,
                actor=dispatch.SYSTEM,
                action="connector_job.succeeded",
                now=now,
                request_id=row.request_id,
                details={
                    "job_id": cj_id,
                    "connector_id": connector.id,
                    "outcome": result.outcome,
                    "retained": [r.category for r in result.retained],
                    "by": by,
                },
            )
            touched.add(row.request_id)
        if marks:
            await connection.execute(_FINISH_MARK, marks)
        await jobs.finish_many(session, [item[0] for item in items], now=now)
    # Committed. Nothing below may fail the batch: its item-by-item redo would find these
    # finishes done, take them for late answers and delete the files they just recorded. A
    # settle missed here is queued by the sweep.
    try:
        results.delete(rt, late)
        if touched:
            await settle_if_done(rt, touched, now=now)
    except Exception:
        log.exception("connectors.after_finish_failed", extra={"requests": len(touched)})


async def settle_if_done(rt: Runtime, request_ids: set[str], *, now: datetime) -> None:
    """Queue a settle for each request that has no unfinished job left (one queued settle per
    request at a time, thanks to its queueing lock). Called after the commit of whatever
    finished a job without the request's lock, and after the commit of a unit of work that
    finished one under it but saw others unfinished: of two of them finishing a request's
    last jobs at once, the later look always sees both commits."""
    from app.connectors import dispatch

    async with rt.read_sessions() as session:
        connection = await session.connection()
        left = set((await connection.execute(_UNFINISHED, {"ids": sorted(request_ids)})).scalars())
    done = sorted(request_ids - left)
    if done:
        async with rt.session() as session:
            for request_id in done:
                await dispatch._settle_later(session, request_id, now=now)
