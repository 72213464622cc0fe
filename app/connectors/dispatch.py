"""Fan-out and the life of connector jobs: calls, answers, callbacks, staff actions, repair.

A request's status follows its jobs: any job failed for good or waiting on staff makes it
``action_required``; all jobs succeeded make it ``completed``; otherwise ``in_progress``.
Every change to a job and the settling of its request happen in one unit of work that first
locks the request row, so concurrent answers for the same request settle it exactly once.

Each connector call is an engine job (``connectors.call``) that finishes inside the same
unit of work as its effect, so a job is never marked done without its result being saved,
and a crash between the two re-runs the call with the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, insert, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import service as audit
from app.connectors import calls, client, results, signing
from app.connectors import service as registry
from app.connectors.models import (
    FINISHED,
    CallbackReceipt,
    Connector,
    ConnectorJob,
    ConnectorMode,
)
from app.connectors.models import ConnectorJobStatus as J
from app.connectors.schemas import OUTCOMES_BY_TYPE, ConnectorResult
from app.connectors.urls import check_url
from app.db import after_commit
from app.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, UnsupportedMedia
from app.exports import service as exports
from app.jobs import service as jobs
from app.jobs import wakeup
from app.jobs.models import Job, JobStatus
from app.jobs.registry import FINISHED as JOB_FINISHED
from app.jobs.registry import handler, periodic
from app.jobs.retry import GiveUp, decide
from app.jobs.worker import JobContext, payload_of
from app.kit.clock import rfc3339, utc
from app.kit.ids import new_id
from app.notifications import service as mail
from app.requests import service as requests
from app.requests.models import DsrRequest
from app.requests.states import RequestStatus, RequestType
from app.runtime import Runtime

log = logging.getLogger("dsr.connectors")

CALL_KIND = "connectors.call"
SWEEP_KIND = "connectors.sweep"
SETTLE_KIND = "connectors.settle"
IDENTITY_TYPES = ("email", "name", "phone", "customer_id")
DATA_TYPES = frozenset({RequestType.access, RequestType.portability})
S = RequestStatus
ACTIVE = (S.in_progress, S.action_required)
SYSTEM = "system"


def _call_lock(job_id: str) -> str:
    return f"call:{job_id}"


async def _record(
    session: AsyncSession,
    cj: ConnectorJob,
    action: str,
    *,
    now: datetime,
    actor: str = SYSTEM,
    **details: Any,
) -> None:
    await audit.record(
        session,
        actor=actor,
        action=f"connector_job.{action}",
        now=now,
        request_id=cj.request_id,
        details={"job_id": cj.id, "connector_id": cj.connector_id, **details},
    )


# --- settling a request from its jobs -----------------------------------------------------


def _target(statuses: list[str]) -> RequestStatus:
    if any(s in (J.failed, J.waiting_for_staff) for s in statuses):
        return S.action_required
    if all(s == J.succeeded for s in statuses):
        return S.completed
    return S.in_progress


async def settle(
    session: AsyncSession, rt: Runtime, req: DsrRequest, *, now: datetime
) -> RequestStatus | None:
    """Move the (locked) request to the status its jobs call for; returns that status (None
    for a request that is no longer active)."""
    if req.status not in ACTIVE:
        return None
    pairs = await registry.jobs_for_request(session, req.id)
    target = _target([cj.status for cj, _ in pairs])
    if target == req.status:
        return target
    if target == S.completed:
        if req.type in DATA_TYPES:
            # The answer is a package: its assembly completes the request. Nothing waits on
            # staff any more, so the request is in progress meanwhile.
            if req.status == S.action_required:
                await requests.set_progress(session, req=req, status=S.in_progress, now=now)
            await exports.queue_assembly(session, request_id=req.id, now=now)
            return target
        outcomes = registry.outcomes_of(pairs, request_type=req.type)
        recipients = sorted({r for o in outcomes for r in o["recipients_notified"]})
        if recipients:
            # Art. 19: the change is passed on to each recipient the registry names.
            await audit.record(
                session,
                actor=SYSTEM,
                action="recipients.notified",
                now=now,
                request_id=req.id,
                details={"recipients": recipients},
            )
        await requests.complete(session, rt=rt, req=req, now=now, outcomes=outcomes)
        return target
    waiting = [cj.id for cj, _ in pairs if cj.status in (J.failed, J.waiting_for_staff)]
    await requests.set_progress(
        session, req=req, status=target, now=now, details={"jobs": waiting} if waiting else None
    )
    return target


# --- fan-out ----------------------------------------------------------------------------------


@handler(requests.FAN_OUT_KIND)
async def fan_out(ctx: JobContext, job: Job) -> object:
    """One connector job per enabled connector that handles the request's type and knows one
    of the identities it carries; none at all completes the request at once."""
    request_id = payload_of(job)["request_id"]
    now = ctx.clock.now()
    async with ctx.session() as session:
        req = await requests.lock(session, request_id)
        if req is not None and req.status in ACTIVE:
            await _create_jobs(session, ctx, req, now=now)
            await settle(session, ctx, req, now=now)
        await jobs.finish(session, job, now=now)
    return JOB_FINISHED


async def _create_jobs(
    session: AsyncSession, rt: Runtime, req: DsrRequest, *, now: datetime
) -> None:
    subject = requests.subject_of(rt, req)
    carried = [name for name in IDENTITY_TYPES if subject.get(name)]
    connectors = await registry.eligible_for(session, request_type=req.type, identity_types=carried)
    existing = set(
        (
            await session.exec(
                select(ConnectorJob.connector_id).where(col(ConnectorJob.request_id) == req.id)
            )
        ).all()
    )
    # The webhook connectors' jobs and their calls are written as rows, one multi-row
    # INSERT per table: a request fans out to tens of systems, and an ORM object pair per
    # system was most of a fan-out's cost. (The call jobs' queueing locks name connector
    # jobs created here, so no other job can hold them.)
    job_rows: list[dict[str, Any]] = []
    call_rows: list[dict[str, Any]] = []
    for connector in connectors:
        if connector.id in existing:
            continue  # a re-run of the fan-out: the job exists already
        cj_id = new_id("cjob")
        if connector.mode == ConnectorMode.manual:
            cj = ConnectorJob(
                id=cj_id,
                request_id=req.id,
                connector_id=connector.id,
                status=J.waiting_for_staff,
                created_at=now,
                updated_at=now,
            )
            session.add(cj)
            await _record(session, cj, "waiting_for_staff", now=now)
            await _tell_staff(session, rt, req, connector, now=now)
            continue
        call = jobs.job_row(
            CALL_KIND,
            {"connector_job_id": cj_id},
            now=now,
            request_id=req.id,
            queueing_lock=_call_lock(cj_id),
            max_attempts=max(1, connector.max_attempts),
        )
        call_rows.append(call)
        job_rows.append(
            {
                "id": cj_id,
                "request_id": req.id,
                "connector_id": connector.id,
                "status": J.queued,
                "attempts": 0,
                "engine_job_id": call["id"],
                "created_at": now,
                "updated_at": now,
            }
        )
        await audit.record(
            session,
            actor=SYSTEM,
            action="connector_job.queued",
            now=now,
            request_id=req.id,
            details={"job_id": cj_id, "connector_id": connector.id},
        )
    if job_rows:
        conn = await session.connection()
        await conn.execute(insert(calls.CJ), job_rows)
        await conn.execute(insert(jobs.JOB_TABLE), call_rows)
        wakeup.on_enqueue(session)


async def _queue_call(
    session: AsyncSession,
    cj: ConnectorJob,
    connector: Connector,
    *,
    now: datetime,
    run_after: datetime | None = None,
) -> None:
    engine_job = await jobs.enqueue(
        session,
        CALL_KIND,
        {"connector_job_id": cj.id},
        now=now,
        run_after=run_after,
        request_id=cj.request_id,
        queueing_lock=_call_lock(cj.id),
        max_attempts=max(1, connector.max_attempts - cj.attempts),
    )
    if engine_job is not None:
        cj.engine_job_id = engine_job.id


async def _tell_staff(
    session: AsyncSession, rt: Runtime, req: DsrRequest, connector: Connector, *, now: datetime
) -> None:
    if not rt.settings.staff_email:
        return
    await mail.queue_mail(
        session,
        settings=rt.settings,
        sealer=rt.sealer,
        now=now,
        to=rt.settings.staff_email,
        template="staff_task",
        language=None,
        request_id=req.id,
        context={
            "request_id": req.id,
            "request_type": req.type,
            "connector_name": connector.name,
            "due_date": req.due_date,
            "organisation": rt.settings.organisation,
        },
    )


# --- calling a connector --------------------------------------------------------------------


@dataclass
class _Call:
    connector: Connector
    request_type: str
    url: str
    body: bytes
    headers: dict[str, str]


def _call_body(
    rt: Runtime, req: Any, cj_id: str, connector: Connector, *, subject: dict[str, Any] | None
) -> bytes:
    """The contract's body, with only the identities this connector declared. ``req`` is
    the request's row (id, type, due_at and its sealed subject and content); ``subject``
    its opened subject when the caller has it already (a batch opens it once per request)."""
    if subject is None:
        subject = rt.sealer.open_json(req.subject_sealed, context=req.id)
    wanted = json.loads(connector.identity_types)
    body: dict[str, Any] = {
        "job_id": cj_id,
        "request_id": req.id,
        "type": req.type,
        "subject": {name: subject[name] for name in wanted if subject.get(name)},
        "callback_url": callback_url(rt, cj_id),
        "due_at": rfc3339(utc(req.due_at)),
    }
    content = rt.sealer.open_json(req.content_sealed, context=req.id) if req.content_sealed else {}
    if req.type == RequestType.rectification:
        body["rectifications"] = content.get("rectifications") or []
    if req.type == RequestType.objection:
        body["objection"] = content.get("objection") or {"purposes": []}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def callback_url(rt: Runtime, job_id: str) -> str:
    return f"{rt.settings.public_url.rstrip('/')}/v1/connector-callbacks/{job_id}"


def _slot(rt: Runtime, connector: Connector) -> asyncio.Semaphore:
    """This process's limit on concurrent calls to one connector."""
    slots: dict[str, tuple[int, asyncio.Semaphore]] = rt.extras.setdefault("connector_slots", {})
    held = slots.get(connector.id)
    if held is None or held[0] != connector.max_concurrency:
        held = (connector.max_concurrency, asyncio.Semaphore(connector.max_concurrency))
        slots[connector.id] = held
    return held[1]


@handler(CALL_KIND)
async def call_connector(ctx: JobContext, job: Job) -> object:
    """Start (batched with the calls started in the same moment), call, finish (batched
    likewise for the common answer, a result): see ``app.connectors.calls``."""
    cj_id = payload_of(job)["connector_job_id"]
    call = await calls.start(ctx, job, cj_id)
    if call is None:
        return JOB_FINISHED
    async with _slot(ctx, call.connector):
        answer = await client.call(
            ctx.http,
            url=call.url,
            body=call.body,
            headers=call.headers,
            timeout=call.connector.timeout_s,
            answer_limit=ctx.settings.callback_max_bytes,
        )
    prepared: _Prepared | None = None
    if answer.kind == "result" and answer.result is not None:
        try:
            prepared = prepare_result(ctx, cj_id, call.request_type, answer.result)
        except ValueError as exc:
            answer = client.Answer("permanent", error=f"invalid result: {exc}")
    await _finish_call(ctx, job, cj_id, call.connector, answer, prepared)
    return JOB_FINISHED


async def _start_call(ctx: JobContext, job: Job, cj_id: str) -> _Call | None:
    """Check the job still needs this call, count the attempt, build the signed body. None
    when there is nothing to call (the job's engine job is then finished). The unbatched
    form of ``calls.start``, which falls back on it when a batch fails.

    The common case is two statements on this hot path: the job's row is claimed with one
    ``UPDATE ... RETURNING`` (only that row is locked: calls for one request never queue
    behind each other), and the request's row is read."""
    now = ctx.clock.now()
    async with ctx.session() as session:
        claimed = (
            await session.exec(
                update(ConnectorJob)
                .where(col(ConnectorJob.id) == cj_id, _wants_call(now))
                .values(
                    status=J.running,
                    attempts=ConnectorJob.attempts + 1,
                    engine_job_id=job.id,
                    updated_at=now,
                )
                .returning(col(ConnectorJob.request_id), col(ConnectorJob.connector_id))
                .execution_options(synchronize_session=False)
            )
        ).one_or_none()
        if claimed is None:
            await jobs.finish(session, job, now=now)
            return None
        facts = sa_select(*REQUEST_FACTS).where(col(DsrRequest.id) == claimed[0])
        req: Any = (await session.exec(facts)).one()  # type: ignore[call-overload]
        connector = await _connector(ctx, session, claimed[1])
        problem = _why_not_callable(ctx, connector, req.status)
        if problem is None and connector.mode == ConnectorMode.webhook:
            return build_call(ctx, req, cj_id, connector, now=now)  # commits the attempt
        await not_callable(session, ctx, req, cj_id, connector, problem, now=now)
        await jobs.finish(session, job, now=now)
    return None


def build_call(
    rt: Runtime,
    req: Any,
    cj_id: str,
    connector: Connector,
    *,
    now: datetime,
    subject: dict[str, Any] | None = None,
) -> _Call:
    """The signed POST for one call (CPU only: run it outside transactions when batched)."""
    assert connector.url is not None
    body = _call_body(rt, req, cj_id, connector, subject=subject)
    headers = signing.sign_headers(
        registry.signing_secrets(rt, connector, now=now), msg_id=f"msg_{cj_id}", body=body
    )
    headers["idempotency-key"] = cj_id
    return _Call(connector, req.type, connector.url, body, headers)


async def not_callable(
    session: AsyncSession,
    ctx: Runtime,
    req: Any,
    cj_id: str,
    connector: Connector,
    problem: str | None,
    *,
    now: datetime,
) -> None:
    """A claimed call that must not go out: the job fails (``problem``), or waits on staff
    when its connector became a manual one since the job was queued."""
    cj = await session.get(ConnectorJob, cj_id)
    assert cj is not None
    if problem is not None:
        await _fail(session, ctx, None, cj, error=problem, now=now)
    else:  # became a manual connector since the job was queued
        cj.status, cj.updated_at = J.waiting_for_staff, now
        session.add(cj)
        await _record(session, cj, "waiting_for_staff", now=now)
        await _tell_staff(
            session, ctx, await requests.get_by_id(session, req.id), connector, now=now
        )
        await _settle_later(session, cj.request_id, now=now)


REQUEST_FACTS: tuple[Any, ...] = (
    col(DsrRequest.id),
    col(DsrRequest.type),
    col(DsrRequest.status),
    col(DsrRequest.due_at),
    col(DsrRequest.subject_sealed),
    col(DsrRequest.content_sealed),
)
CONNECTOR_TTL_SECONDS = 2.0


async def _connector(rt: Runtime, session: AsyncSession, connector_id: str) -> Connector:
    """The registry entry, from a per-process cache kept a couple of seconds: a burst of
    calls to one system reads it once. (A change takes effect within that time.)"""
    cache: dict[str, tuple[float, Connector]] = rt.extras.setdefault("connector_cache", {})
    held = cache.get(connector_id)
    moment = time.monotonic()
    if held is not None and held[0] > moment:
        return held[1]
    connector = await registry.get(session, connector_id)
    session.expunge(connector)
    cache[connector_id] = (moment + CONNECTOR_TTL_SECONDS, connector)
    return connector


async def _lock_job(
    session: AsyncSession, cj_id: str
) -> tuple[DsrRequest | None, ConnectorJob | None]:
    """The job and its request, locked request first (the order every writer follows)."""
    cj = await session.get(ConnectorJob, cj_id)
    if cj is None:
        return None, None
    req = await requests.lock(session, cj.request_id)
    await session.refresh(cj, with_for_update=True)
    return req, cj


def _wants_call(now: datetime) -> Any:
    """Queued or running (a re-run after a crash), or waiting for a callback that is late."""
    return or_(
        col(ConnectorJob.status).in_([J.queued, J.running]),
        and_(
            col(ConnectorJob.status) == J.waiting_callback,
            col(ConnectorJob.callback_deadline) <= now,
        ),
    )


def _why_not_callable(rt: Runtime, connector: Connector, request_status: str) -> str | None:
    if request_status not in ACTIVE:
        return f"the request is {request_status}; nothing was sent"
    if not connector.enabled or connector.deleted_at is not None:
        return "the connector is disabled"
    if connector.mode == ConnectorMode.webhook:
        try:
            check_url(connector.url or "", allowed_hosts=rt.settings.connector_allowed_hosts)
        except ValueError as exc:
            return f"connector URL refused: {exc}"
    return None


async def _finish_call(
    ctx: JobContext,
    job: Job,
    cj_id: str,
    connector: Connector,
    answer: client.Answer,
    prepared: _Prepared | None,
) -> None:
    now = ctx.clock.now()
    if prepared is not None and prepared.result.status == "completed":
        await calls.finish(ctx, job, cj_id, connector, prepared)
        return
    async with ctx.session() as session:
        cj = await session.get(ConnectorJob, cj_id, with_for_update=True)
        if cj is None or cj.status != J.running or cj.engine_job_id != job.id:
            # A callback, staff or the sweep settled it meanwhile: this answer is late.
            if prepared is not None:
                results.delete(ctx, prepared.file_names)
            await jobs.finish(session, job, now=now)
            return
        if answer.kind == "result" and prepared is not None:
            await _apply(session, ctx, None, cj, prepared, by=f"connector:{connector.id}", now=now)
            await jobs.finish(session, job, now=now)
        elif answer.kind == "accepted":
            timeout = connector.callback_timeout_s or ctx.settings.callback_timeout_seconds
            cj.status, cj.updated_at = J.waiting_callback, now
            cj.callback_deadline = now + timedelta(seconds=timeout)
            await _record(session, cj, "waiting_callback", now=now, attempt=cj.attempts)
            await jobs.finish(session, job, now=now)
            if cj.attempts < connector.max_attempts:
                await _queue_call(session, cj, connector, now=now, run_after=cj.callback_deadline)
        elif answer.kind == "permanent":
            error = answer.error or "refused"
            await _fail(session, ctx, None, cj, error=error, said=answer.said, now=now)
            await jobs.fail(session, job, now=now, error=client.with_said(error, answer.said))
        else:
            error = answer.error or "failed"
            decision = decide(
                attempt=job.attempts,
                max_attempts=job.max_attempts,
                base=ctx.settings.retry_base_seconds,
                cap=ctx.settings.retry_cap_seconds,
                retry_after=answer.retry_after,
            )
            if isinstance(decision, GiveUp):
                final = f"gave up after {cj.attempts} attempts: {error}"
                await _fail(session, ctx, None, cj, error=final, said=answer.said, now=now)
                await jobs.fail(session, job, now=now, error=client.with_said(final, answer.said))
            else:
                cj.status, cj.updated_at = J.queued, now
                cj.last_error = client.with_said(error, answer.said)[:1000]
                await _record(
                    session,
                    cj,
                    "retry_scheduled",
                    now=now,
                    attempt=cj.attempts,
                    error=error[:200],
                    delay_seconds=round(decision.delay_seconds, 3),
                )
                await jobs.retry_later(
                    session,
                    job,
                    now=now,
                    delay_seconds=decision.delay_seconds,
                    error=client.with_said(error, answer.said),
                )
        session.add(cj)


async def _finish_with_result(
    ctx: JobContext,
    job: Job,
    cj_id: str,
    connector: Connector,
    prepared: _Prepared,
    *,
    now: datetime,
) -> None:
    """The common end of a call (a 200 with a result), unbatched (``calls.finish`` falls back
    on it when a batch fails), in one short unit of work: the job
    row is updated only if this call still owns it, the event recorded, the engine job
    finished. Then, outside it, whether the request is done: only when no other job of it
    is left unfinished does a settle get queued (the last one to commit always sees that)."""
    result = prepared.result
    async with ctx.session() as session:
        files: dict[str, Any] = {}
        if prepared.data_files:  # uploads may have added files while the call ran
            held = (
                await session.exec(
                    select(ConnectorJob.data_files)
                    .where(col(ConnectorJob.id) == cj_id)
                    .with_for_update()
                )
            ).one_or_none()
            merged = (json.loads(held) if held else []) + prepared.data_files
            files = {"data_files": json.dumps(merged)}
        retained = [r.model_dump(mode="json") for r in result.retained]
        done = (
            await session.exec(
                update(ConnectorJob)
                .where(
                    col(ConnectorJob.id) == cj_id,
                    col(ConnectorJob.status) == J.running,
                    col(ConnectorJob.engine_job_id) == job.id,
                )
                .values(
                    status=J.succeeded,
                    outcome=result.outcome,
                    retained=json.dumps(retained, ensure_ascii=False) if retained else None,
                    message_sealed=ctx.sealer.seal(result.message.encode(), context=cj_id)
                    if result.message
                    else None,
                    finished_by=f"connector:{connector.id}",
                    callback_deadline=None,
                    updated_at=now,
                    finished_at=now,
                    **files,
                )
                .returning(col(ConnectorJob.request_id))
                .execution_options(synchronize_session=False)
            )
        ).one_or_none()
        if done is None:  # a callback, staff or the sweep settled it meanwhile
            results.delete(ctx, prepared.file_names)
        else:
            await audit.record(
                session,
                actor=SYSTEM,
                action="connector_job.succeeded",
                now=now,
                request_id=done[0],
                details={
                    "job_id": cj_id,
                    "connector_id": connector.id,
                    "outcome": result.outcome,
                    "retained": [r.category for r in result.retained],
                    "by": f"connector:{connector.id}",
                },
            )
        await jobs.finish(session, job, now=now)
    if done is not None:
        await calls.settle_if_done(ctx, {done[0]}, now=now)


async def _fail(
    session: AsyncSession,
    rt: Runtime,
    req: DsrRequest | None,
    cj: ConnectorJob,
    *,
    error: str,
    now: datetime,
    said: str | None = None,
    actor: str = SYSTEM,
) -> None:
    """The job failed for good: ``error`` goes to the audit trail, ``said`` (the connector's
    own words, which may name the person) only to ``last_error`` beside it."""
    cj.status, cj.updated_at = J.failed, now
    cj.last_error = client.with_said(error, said)[:1000]
    cj.finished_at = now
    session.add(cj)
    await jobs.withdraw(session, queueing_lock=_call_lock(cj.id))
    await _record(session, cj, "failed", now=now, actor=actor, error=error[:200])
    # Operators watch logs, not every request's page: a system that stopped answering shows
    # here by ids and the service's account (never the connector's words: they may name the
    # person). Written before the commit: a rolled-back failure is logged and tried again.
    log.warning(
        "connectors.job_failed",
        extra={
            "job_id": cj.id,
            "request_id": cj.request_id,
            "connector_id": cj.connector_id,
            "error": error[:200],
        },
    )
    await _settle(session, rt, req, cj, now=now)


# --- results (from a 200, a callback, or staff) ---------------------------------------------


@dataclass
class _Prepared:
    result: ConnectorResult
    data_files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def file_names(self) -> list[str]:
        return [entry["file"] for entry in self.data_files]


def prepare_result(
    rt: Runtime, cj_id: str, request_type: str, result: ConnectorResult
) -> _Prepared:
    """Check a result against the request's type and store its data (outside any
    transaction: files can be large). ValueError names what is wrong."""
    if result.status == "completed":
        allowed = OUTCOMES_BY_TYPE[RequestType(request_type)]
        if result.outcome not in allowed:
            raise ValueError(
                f"outcome: {result.outcome!r} does not answer a request of type {request_type} "
                f"(expected one of: {', '.join(sorted(allowed))})"
            )
    prepared = _Prepared(result)
    if result.status == "completed" and result.data and request_type in DATA_TYPES:
        prepared.data_files.append(results.store_data(rt, cj_id, result.data))
    return prepared


async def _apply(
    session: AsyncSession,
    rt: Runtime,
    req: DsrRequest | None,
    cj: ConnectorJob,
    prepared: _Prepared,
    *,
    by: str,
    now: datetime,
    webhook_id: str | None = None,
) -> None:
    result = prepared.result
    if result.status == "failed":
        results.delete(rt, prepared.file_names)
        await _fail(
            session,
            rt,
            req,
            cj,
            error="the connector reported a failure",
            said=result.message or "no reason given",
            now=now,
            actor=by,
        )
        return
    files = json.loads(cj.data_files) if cj.data_files else []
    files.extend(prepared.data_files)
    cj.data_files = json.dumps(files) if files else None
    cj.status, cj.outcome, cj.updated_at, cj.finished_at = J.succeeded, result.outcome, now, now
    cj.retained = (
        json.dumps([r.model_dump(mode="json") for r in result.retained], ensure_ascii=False)
        if result.retained
        else None
    )
    if result.message:
        cj.message_sealed = rt.sealer.seal(result.message.encode(), context=cj.id)
    cj.finished_by, cj.result_webhook_id, cj.callback_deadline = by, webhook_id, None
    session.add(cj)
    # The call queued for when the callback would be late is not wanted any more.
    await jobs.withdraw(session, queueing_lock=_call_lock(cj.id))
    await _record(
        session,
        cj,
        "succeeded",
        now=now,
        actor=by if by.startswith("staff") else SYSTEM,
        outcome=result.outcome,
        retained=[r.category for r in result.retained],
        by=by,
    )
    if await _settle(session, rt, req, cj, now=now) == S.in_progress:
        _look_again_after_commit(session, rt, cj.request_id, now=now)


def _look_again_after_commit(
    session: AsyncSession, rt: Runtime, request_id: str, *, now: datetime
) -> None:
    """This unit of work finished a job under the request's lock and saw others unfinished.
    A worker finishing the last of them commits without that lock and then looks for jobs
    left: if it looked before this commit, it saw this job unfinished, as this settle saw
    its job, and neither would settle the request. A second look once this commit is visible
    closes the gap: of the two looks, the later one sees both jobs finished."""

    async def look() -> None:
        try:
            await calls.settle_if_done(rt, {request_id}, now=now)
        except Exception:  # committed: the sweep settles it if this look fails
            log.exception("connectors.settle_look_failed", extra={"request_id": request_id})

    after_commit(session, f"connectors.settle_look.{request_id}", look)


async def _settle(
    session: AsyncSession, rt: Runtime, req: DsrRequest | None, cj: ConnectorJob, *, now: datetime
) -> RequestStatus | None:
    """Settle now when the caller holds the request's lock (callbacks, staff, the sweep),
    else queue a settle job (the worker's hot path never waits on the request's row).
    Returns the status settled on now, None when queued."""
    if req is not None:
        return await settle(session, rt, req, now=now)
    await _settle_later(session, cj.request_id, now=now)
    return None


async def _settle_later(session: AsyncSession, request_id: str, *, now: datetime) -> None:
    """One queued settle per request at a time: many jobs ending together settle it once,
    and a job ending while a settle runs queues the next one, so none is missed."""
    await jobs.enqueue(
        session,
        SETTLE_KIND,
        {"request_id": request_id},
        now=now,
        request_id=request_id,
        queueing_lock=f"settle:{request_id}",
    )


@handler(SETTLE_KIND)
async def settle_request(ctx: JobContext, job: Job) -> object:
    now = ctx.clock.now()
    async with ctx.session() as session:
        req = await requests.lock(session, payload_of(job)["request_id"])
        if req is not None:
            await settle(session, ctx, req, now=now)
        await jobs.finish(session, job, now=now)
    return JOB_FINISHED


# --- callbacks and uploads (connector -> service) ------------------------------------------


class BadCallback(Exception):
    """Signature or timestamp refused: a 401, nothing changes."""


async def _job_and_connector(session: AsyncSession, job_id: str) -> tuple[ConnectorJob, Connector]:
    cj = await session.get(ConnectorJob, job_id) if len(job_id) <= 40 else None
    if cj is None:
        raise NotFound("no such job")
    connector = await registry.get(session, cj.connector_id)
    return cj, connector


async def _superseded_connector(session: AsyncSession, job_id: str) -> Connector:
    """The connector of a job a re-run superseded (its callbacks are refused like a finished
    job's, once signed); NotFound for an id that never was a job."""
    from app.reruns.service import superseded_job

    view = await superseded_job(session, job_id) if len(job_id) <= 40 else None
    if view is None:
        raise NotFound("no such job")
    return await registry.get(session, view["connector_id"])


SUPERSEDED = "this job belongs to a run that a re-run of its request superseded"


async def _receipt(
    session: AsyncSession, connector_id: str, webhook_id: str
) -> CallbackReceipt | None:
    return await session.get(CallbackReceipt, (connector_id, webhook_id))


def _add_receipt(
    session: AsyncSession,
    connector_id: str,
    webhook_id: str,
    cj: ConnectorJob,
    *,
    kind: str,
    now: datetime,
    answer: dict[str, Any],
) -> None:
    session.add(
        CallbackReceipt(
            connector_id=connector_id,
            webhook_id=webhook_id,
            job_id=cj.id,
            kind=kind,
            received_at=now,
            answer=json.dumps(answer),
        )
    )


def _duplicate(receipt: CallbackReceipt, job_id: str, *, kind: str) -> dict[str, Any]:
    """A repeated webhook-id is answered as the first time, and nothing is applied (also
    when a re-run has superseded the job since). A webhook-id names one message: the same
    id on another job, or on an upload where it named a result (or the other way round),
    is another message that reuses it."""
    if receipt.job_id != job_id:
        raise Conflict("this webhook-id was already used for another job")
    if receipt.kind != kind:
        raise Conflict(
            f"this webhook-id was already used for {_KIND_NAMES[receipt.kind]}; "
            f"{_KIND_NAMES[kind]} needs a webhook-id of its own"
        )
    return {**json.loads(receipt.answer), "duplicate": True}


_KIND_NAMES = {"result": "a result", "upload": "an upload"}


async def accept_callback(
    rt: Runtime, *, job_id: str, body: bytes, headers: Mapping[str, str]
) -> dict[str, Any]:
    """A connector's signed result. Checked before parsing; applied once per webhook-id."""
    now = rt.clock.now()
    async with rt.read_sessions() as session:
        try:
            cj, connector = await _job_and_connector(session, job_id)
        except NotFound:
            connector = await _superseded_connector(session, job_id)
            cj = None
        try:
            signing.verify(
                registry.signing_secrets(rt, connector, now=now), body=body, headers=headers
            )
        except signing.BadSignature as exc:
            raise BadCallback(str(exc)) from None
        webhook_id = headers["webhook-id"]
        receipt = await _receipt(session, connector.id, webhook_id)
        if receipt is not None:
            return _duplicate(receipt, job_id, kind="result")
        if cj is None:
            raise Conflict(f"{SUPERSEDED}; the callback changes nothing")
        if cj.status in FINISHED:
            raise Conflict(f"this job is {cj.status}; the callback changes nothing")
        request_type = (await requests.get_by_id(session, cj.request_id)).type
    try:
        result = client.parse_result(body)
    except ValueError as exc:
        raise InvalidInput.field(("body",), f"not a connector result: {exc}") from None
    if result.job_id is not None and result.job_id != job_id:
        raise InvalidInput.field(("body", "job_id"), "does not match the job in the URL")
    try:
        prepared = prepare_result(rt, job_id, request_type, result)
    except ValueError as exc:
        raise InvalidInput.field(("body", "outcome"), str(exc)) from None
    try:
        async with rt.session() as session:
            req, locked = await _lock_job(session, job_id)
            assert req is not None
            assert locked is not None
            cj = locked
            receipt = await _receipt(session, connector.id, webhook_id)
            if receipt is not None:  # the same callback won a race with this one
                results.delete(rt, prepared.file_names)
                return _duplicate(receipt, job_id, kind="result")
            if cj.status in FINISHED:
                raise Conflict(f"this job is {cj.status}; the callback changes nothing")
            await _apply(
                session,
                rt,
                req,
                cj,
                prepared,
                by=f"connector:{connector.id}",
                now=now,
                webhook_id=webhook_id,
            )
            answer = {"job_id": cj.id, "status": cj.status, "duplicate": False}
            _add_receipt(
                session, connector.id, webhook_id, cj, kind="result", now=now, answer=answer
            )
            return answer
    except BaseException:
        results.delete(rt, prepared.file_names)
        raise


UPLOAD_FORMATS = {"application/json": "json", "application/x-ndjson": "ndjson"}


async def accept_upload(
    rt: Runtime,
    *,
    job_id: str,
    headers: Mapping[str, str],
    content_type: str,
    chunks: Any,
) -> dict[str, Any]:
    """A connector's large data, streamed to an encrypted file as it arrives. The signature
    covers the whole body and is checked when the stream ends; a bad one discards the file."""
    now = rt.clock.now()
    async with rt.read_sessions() as session:
        try:
            cj, connector = await _job_and_connector(session, job_id)
        except NotFound:
            connector = await _superseded_connector(session, job_id)
            cj = None
        try:
            check = signing.StreamCheck(registry.signing_secrets(rt, connector, now=now), headers)
        except signing.BadSignature as exc:
            raise BadCallback(str(exc)) from None
        webhook_id = headers["webhook-id"]
        receipt = await _receipt(session, connector.id, webhook_id)
        if receipt is None and cj is None:
            raise Conflict(f"{SUPERSEDED}; the upload changes nothing")
        if receipt is None and cj is not None and cj.status in FINISHED:
            raise Conflict(f"this job is {cj.status}; the upload changes nothing")
    if receipt is not None:
        # Answered as the first time, but only once the body proves it is the same (read
        # with no database connection held: it may be gigabytes).
        await _read_signed(chunks, check, limit=rt.settings.upload_max_bytes)
        return _duplicate(receipt, job_id, kind="upload")
    media = content_type.split(";")[0].strip().lower()
    if media not in UPLOAD_FORMATS:
        raise UnsupportedMedia("an upload is application/json or application/x-ndjson")
    name, temporary, writer = results.new_writer(rt, job_id, suffix="upload")
    try:
        size = await _read_signed(chunks, check, limit=rt.settings.upload_max_bytes, sink=writer)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    entry = {"file": name, "format": UPLOAD_FORMATS[media], "bytes": size, "source": "upload"}
    try:
        async with rt.session() as session:
            _, locked = await _lock_job(session, job_id)
            assert locked is not None
            cj = locked
            receipt = await _receipt(session, connector.id, webhook_id)
            if receipt is not None:
                temporary.unlink(missing_ok=True)
                return _duplicate(receipt, job_id, kind="upload")
            if cj.status in FINISHED:
                raise Conflict(f"this job is {cj.status}; the upload changes nothing")
            results.publish(rt, temporary, name)
            files = json.loads(cj.data_files) if cj.data_files else []
            files.append(entry)
            cj.data_files, cj.updated_at = json.dumps(files), now
            session.add(cj)
            answer = {
                "job_id": job_id,
                "bytes": size,
                "format": entry["format"],
                "duplicate": False,
            }
            _add_receipt(
                session, connector.id, webhook_id, cj, kind="upload", now=now, answer=answer
            )
            await _record(session, cj, "data_uploaded", now=now, bytes=size, format=entry["format"])
    except BaseException:
        temporary.unlink(missing_ok=True)
        results.delete(rt, [name])
        raise
    return answer


async def _read_signed(
    chunks: Any, check: signing.StreamCheck, *, limit: int, sink: Any = None
) -> int:
    """Pass a streamed body through the signature check (and into ``sink``), refusing it
    past ``limit`` bytes or when the signature does not match at the end."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
        check.update(chunk)
        if sink is not None:
            sink.write(chunk)
    try:
        check.verify()
    except signing.BadSignature as exc:
        raise BadCallback(str(exc)) from None
    return size


# --- staff actions --------------------------------------------------------------------------


async def _staff_job(session: AsyncSession, req: DsrRequest, job_id: str) -> ConnectorJob:
    cj = (
        await session.get(ConnectorJob, job_id, with_for_update=True) if len(job_id) <= 40 else None
    )
    if cj is None or cj.request_id != req.id:
        raise NotFound("no such job for this request")
    return cj


async def retry_job(
    session: AsyncSession, *, rt: Runtime, req: DsrRequest, job_id: str, actor: str, now: datetime
) -> DsrRequest:
    """Queue a failed job again with a fresh set of attempts (after its system was fixed)."""
    cj = await _staff_job(session, req, job_id)
    if req.status not in ACTIVE:
        raise Conflict(
            f"cannot retry a job of a request that is {req.status}",
            extra={"current_status": req.status},
        )
    if cj.status != J.failed:
        raise Conflict(f"only a failed job can be retried; this one is {cj.status}")
    connector = await registry.get(session, cj.connector_id)
    if not connector.enabled or connector.deleted_at is not None:
        raise Conflict("the connector is disabled: enable it first, or complete the job by hand")
    cj.attempts, cj.finished_at, cj.updated_at = 0, None, now
    # A call still queued from before would hold the queueing lock and keep the retry's own
    # call (now, with a fresh set of attempts) out of the queue: it is taken back.
    await jobs.withdraw(session, queueing_lock=_call_lock(cj.id))
    if connector.mode == ConnectorMode.manual:
        cj.status = J.waiting_for_staff
        await _tell_staff(session, rt, req, connector, now=now)
    else:
        cj.status = J.queued
        await _queue_call(session, cj, connector, now=now)
    session.add(cj)
    await _record(session, cj, "retried", now=now, actor=actor)
    await settle(session, rt, req, now=now)
    return req


async def complete_job(
    session: AsyncSession,
    *,
    rt: Runtime,
    req: DsrRequest,
    job_id: str,
    result: ConnectorResult,
    actor: str,
    now: datetime,
) -> DsrRequest:
    """Staff enter a job's result by hand: a manual connector's task, or a failed job whose
    system was handled outside the service."""
    cj = await _staff_job(session, req, job_id)
    if req.status not in ACTIVE:
        raise Conflict(
            f"cannot complete a job of a request that is {req.status}",
            extra={"current_status": req.status},
        )
    if cj.status not in (J.waiting_for_staff, J.failed):
        raise Conflict(
            f"only a manual task or a failed job can be completed by hand; this one is {cj.status}"
        )
    try:
        prepared = prepare_result(rt, cj.id, req.type, result)
    except ValueError as exc:
        raise InvalidInput.field(("body", "outcome"), str(exc)) from None
    await _apply(session, rt, req, cj, prepared, by=actor, now=now)
    return req


# --- never stuck ----------------------------------------------------------------------------


SWEEP_BATCH = 200
# How long a webhook-id is remembered: senders that follow Standard Webhooks retry a message
# for about 27 hours (the reference schedule), with the same id each time.
RECEIPTS_KEPT = timedelta(days=3)


@periodic(SWEEP_KIND, every_seconds=60)
async def sweep(ctx: JobContext, job: Job) -> None:
    """Repair what a crash or a lost engine job could leave behind: connector jobs whose
    engine job ended without them, callbacks that never came, requests whose jobs are all
    done but whose status did not follow, fan-outs that never ran. Idempotent."""
    now = ctx.clock.now()
    async with ctx.session() as session:
        await _requeue_orphans(session, ctx, now=now)
        await _settle_stale_requests(session, ctx, now=now)
        await _refan_requests(session, now=now)
        await session.exec(
            delete(CallbackReceipt).where(col(CallbackReceipt.received_at) < now - RECEIPTS_KEPT)
        )


async def _requeue_orphans(session: AsyncSession, rt: Runtime, *, now: datetime) -> None:
    live = exists().where(
        col(Job.id) == col(ConnectorJob.engine_job_id),
        col(Job.status).in_([JobStatus.queued, JobStatus.running]),
    )
    stale_after = now - timedelta(seconds=60)
    rows = await session.exec(
        select(ConnectorJob)
        .where(
            or_(
                col(ConnectorJob.status).in_([J.queued, J.running]),
                and_(
                    col(ConnectorJob.status) == J.waiting_callback,
                    col(ConnectorJob.callback_deadline) < stale_after,
                ),
            ),
            col(ConnectorJob.updated_at) < stale_after,
            ~live,
        )
        .limit(SWEEP_BATCH)
    )
    for cj in rows.all():
        req = await requests.lock(session, cj.request_id)
        await session.refresh(cj, with_for_update=True)
        engine_job = await session.get(Job, cj.engine_job_id) if cj.engine_job_id else None
        if req is None or (
            engine_job and engine_job.status in (JobStatus.queued, JobStatus.running)
        ):
            continue
        connector = await registry.get(session, cj.connector_id)
        if engine_job and engine_job.status == JobStatus.failed and cj.status != J.waiting_callback:
            # Failed by the engine itself (workers lost mid-call): the service's own words.
            await _fail(
                session, rt, req, cj, error=engine_job.last_error or "the call failed", now=now
            )
        elif cj.attempts >= connector.max_attempts and cj.status == J.waiting_callback:
            await _fail(
                session,
                rt,
                req,
                cj,
                error=f"no callback after {cj.attempts} calls",
                now=now,
            )
        else:
            await _queue_call(session, cj, connector, now=now)
            cj.updated_at = now
            session.add(cj)
            await _record(session, cj, "requeued_by_sweep", now=now)
        log.warning("connectors.sweep_repaired", extra={"job_id": cj.id})


async def _settle_stale_requests(session: AsyncSession, rt: Runtime, *, now: datetime) -> None:
    """Active requests whose status does not match their jobs (a settle that was missed)."""
    unfinished = exists().where(
        col(ConnectorJob.request_id) == col(DsrRequest.id),
        col(ConnectorJob.status).not_in([J.succeeded]),
    )
    needs_staff = exists().where(
        col(ConnectorJob.request_id) == col(DsrRequest.id),
        col(ConnectorJob.status).in_([J.failed, J.waiting_for_staff]),
    )
    any_job = exists().where(col(ConnectorJob.request_id) == col(DsrRequest.id))
    stale = now - timedelta(seconds=60)
    ids = await session.exec(
        select(DsrRequest.id)
        .where(
            col(DsrRequest.updated_at) < stale,
            or_(
                and_(col(DsrRequest.status) == S.in_progress, any_job, ~unfinished),
                and_(col(DsrRequest.status) == S.in_progress, needs_staff),
                and_(col(DsrRequest.status) == S.action_required, ~needs_staff),
            ),
        )
        .limit(SWEEP_BATCH)
    )
    for request_id in ids.all():
        req = await requests.lock(session, request_id)
        if req is not None:
            await settle(session, rt, req, now=now)


async def _refan_requests(session: AsyncSession, *, now: datetime) -> None:
    """In-progress requests with no connector job and no fan-out waiting: fan out again
    (a fan-out job that failed for good would otherwise strand them)."""
    any_job = exists().where(col(ConnectorJob.request_id) == col(DsrRequest.id))
    fan_out_live = exists().where(
        col(Job.request_id) == col(DsrRequest.id),
        col(Job.kind) == requests.FAN_OUT_KIND,
        col(Job.status).in_([JobStatus.queued, JobStatus.running]),
    )
    ids = await session.exec(
        select(DsrRequest.id)
        .where(
            col(DsrRequest.status) == S.in_progress,
            col(DsrRequest.updated_at) < now - timedelta(seconds=60),
            ~any_job,
            ~fan_out_live,
        )
        .limit(SWEEP_BATCH)
    )
    for request_id in ids.all():
        await requests.queue_fan_out(session, request_id=request_id, now=now)
