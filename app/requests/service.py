"""The rules of a request's life: intake, identity, approval, staff decisions, the deadline.

Every function runs in the caller's unit of work and never commits: the state change, its
audit event, its e-mails and the jobs it causes are written together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, case, or_
from sqlalchemy import select as sa_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import service as audit
from app.db import after_commit, constant_list
from app.deadlines import (
    Deadline,
    IdentityWait,
    NoExtension,
    acknowledgement_due,
    calendar_for,
    compute_deadline,
    get_regime,
)
from app.errors import Conflict, InvalidInput, NotFound
from app.identity import service as identity
from app.jobs import service as jobs
from app.jobs import wakeup
from app.kit.clock import utc
from app.kit.crypto import normalise_email, same, token_digest
from app.kit.ids import new_id
from app.notifications import service as mail
from app.requests import rows
from app.requests.models import DsrRequest, IdempotencyRecord
from app.requests.schemas import (
    RejectIn,
    RequestCreate,
    StaffRequestCreate,
)
from app.requests.states import (
    OPEN,
    RejectionReason,
    RequestStatus,
    check_transition,
    require_open,
)
from app.runtime import Runtime

log = logging.getLogger("dsr.requests")

S = RequestStatus
FAN_OUT_KIND = "requests.fan_out"
IDEMPOTENCY_TTL = timedelta(hours=24)
REQUEST_TABLE: Table = DsrRequest.__table__  # type: ignore[attr-defined]
IDEMPOTENCY_TABLE: Table = IdempotencyRecord.__table__  # type: ignore[attr-defined]
SUBJECT = "subject"
SYSTEM = "system"


# --- reading --------------------------------------------------------------------------------


def subject_of(rt: Runtime, req: DsrRequest) -> dict[str, Any]:
    return rt.sealer.open_json(req.subject_sealed, context=req.id)


def content_of(rt: Runtime, req: DsrRequest) -> dict[str, Any]:
    if req.content_sealed is None:
        return {}
    return rt.sealer.open_json(req.content_sealed, context=req.id)


async def get_for_subject(session: AsyncSession, *, request_id: str, token: str) -> DsrRequest:
    """The request, if the status token is its own. Any mismatch is the same 404."""
    req = await session.get(DsrRequest, request_id) if len(request_id) <= 40 else None
    if req is None or not same(req.status_token_digest, token_digest(token)):
        raise NotFound("no such request")
    return req


async def get_by_id(session: AsyncSession, request_id: str) -> DsrRequest:
    req = await session.get(DsrRequest, request_id) if len(request_id) <= 40 else None
    if req is None:
        raise NotFound("no such request")
    return req


def _plausible_id(request_id: str) -> bool:
    return len(request_id) <= 40  # the column's size: a longer id is not looked up


async def get_for_staff(
    session: AsyncSession, request_id: str, *, lock: bool = False
) -> DsrRequest:
    req = (
        await session.get(DsrRequest, request_id, with_for_update=lock)
        if _plausible_id(request_id)
        else None
    )
    if req is None:
        raise NotFound("no such request")
    return req


@dataclass(frozen=True)
class StaffRead:
    request: DsrRequest
    duplicates: list[str]
    events: list[audit.TrailEvent]


async def read_for_staff(session: AsyncSession, request_id: str) -> StaffRead:
    """A request to show, with its duplicates (``duplicates_of``) and its audit trail
    (``audit.events_for_request``), in one Core statement: the staff detail view reads all
    three on every call, and a statement costs more in the driver and SQLAlchemy (0.1-0.25 ms
    of CPU) than in the database. The request is for reading only: it is built from the row
    without the session (``model_construct``, as claimed jobs are), so nothing tracks it;
    changes go through ``get_for_staff``."""
    if not _plausible_id(request_id):
        raise NotFound("no such request")
    conn = await session.connection()
    rows = (await conn.execute(_WITH_DUPLICATES, {"request_id": request_id})).all()
    if not rows or rows[0].id != request_id:
        raise NotFound("no such request")
    fields = dict(rows[0]._mapping)
    trail = fields.pop("trail")
    return StaffRead(
        request=DsrRequest.model_construct(**fields),
        duplicates=[row.id for row in rows[1:]],
        events=audit.trail_from_column(trail),
    )


# --- the deadline ---------------------------------------------------------------------------


def deadline_of(
    rt: Runtime, req: DsrRequest, *, now: datetime, extended: bool | None = None
) -> Deadline:
    """The request's deadline as the law counts it, from its stored facts."""
    return _deadline_from(
        rt,
        jurisdiction=req.jurisdiction,
        received_at=req.received_at,
        wait_started=req.identity_wait_started_at,
        wait_ended=req.identity_wait_ended_at,
        now=now,
        extended=req.extended if extended is None else extended,
    )


def _deadline_from(
    rt: Runtime,
    *,
    jurisdiction: str,
    received_at: datetime,
    wait_started: datetime | None,
    wait_ended: datetime | None,
    now: datetime,
    extended: bool,
) -> Deadline:
    waits = []
    if wait_started is not None:
        waits.append(
            IdentityWait(
                started_at=utc(wait_started), ended_at=utc(wait_ended) if wait_ended else None
            )
        )
    return compute_deadline(
        regime=get_regime(jurisdiction),
        received_at=utc(received_at),
        tz=rt.settings.tz,
        calendar=calendar_for(rt.settings.country),
        now=now,
        extended=extended,
        identity_waits=waits,
    )


def _refresh_deadline(rt: Runtime, req: DsrRequest, *, now: datetime) -> None:
    original = deadline_of(rt, req, now=now, extended=False)
    current = deadline_of(rt, req, now=now) if req.extended else original
    req.original_due_date = original.due_date
    req.due_date, req.due_at = current.due_date, current.due_at


def acknowledgement_due_date(rt: Runtime, req: DsrRequest) -> date | None:
    return acknowledgement_due(
        regime=get_regime(req.jurisdiction),
        received_at=utc(req.received_at),
        tz=rt.settings.tz,
        calendar=calendar_for(rt.settings.country),
    )


# --- e-mail -----------------------------------------------------------------------------------


def _local_day(rt: Runtime, instant: datetime) -> date:
    return utc(instant).astimezone(rt.settings.tz).date()


def status_url(rt: Runtime, req: DsrRequest) -> str:
    return _status_url(rt, req.id)


def _status_url(rt: Runtime, request_id: str) -> str:
    return f"{rt.settings.public_url.rstrip('/')}/v1/requests/{request_id}"


def _mail_context(
    rt: Runtime,
    *,
    request_id: str,
    request_type: str,
    received_at: datetime,
    due_date: date,
    **extra: object,
) -> dict[str, object]:
    """What every template receives (see ``app.notifications.templates``), and ``extra``."""
    return {
        "request_id": request_id,
        "request_type": request_type,
        "status_url": _status_url(rt, request_id),
        "received_date": _local_day(rt, received_at),
        "due_date": due_date,
        "organisation": rt.settings.organisation,
        **extra,
    }


async def _notify(
    session: AsyncSession,
    rt: Runtime,
    req: DsrRequest,
    template: str,
    *,
    now: datetime,
    email: str | None = None,
    **extra: object,
) -> None:
    to = email or subject_of(rt, req)["email"]
    context = _mail_context(
        rt,
        request_id=req.id,
        request_type=req.type,
        received_at=req.received_at,
        due_date=req.due_date,
        **extra,
    )
    await mail.queue_mail(
        session,
        settings=rt.settings,
        sealer=rt.sealer,
        now=now,
        to=to,
        template=template,
        language=req.language,
        context=context,
        request_id=req.id,
    )


# --- intake ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intake:
    """What ``POST /v1/requests`` answers (the status token exists only here, once)."""

    answer: dict[str, Any]
    replayed: bool = False


def _body_digest(body: RequestCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def replay_idempotent(
    session: AsyncSession, *, rt: Runtime, key: str, body: RequestCreate, now: datetime
) -> Intake | None:
    """The first answer for this key and body, if any; 409 for the same key, another body."""
    record = await session.get(IdempotencyRecord, token_digest(key))
    if record is None:
        return None
    if utc(record.created_at) + IDEMPOTENCY_TTL <= now:
        await session.delete(record)
        await session.flush()
        return None
    if not same(record.body_digest, _body_digest(body)):
        raise Conflict("this Idempotency-Key was already used with another body")
    answer = rt.sealer.open_json(record.response_sealed, context=record.key_digest)
    return Intake(answer=answer, replayed=True)


def _verification_method(rt: Runtime, request_type: str) -> str:
    return "document" if request_type in rt.settings.document_types else "email_code"


async def create_request(
    session: AsyncSession,
    *,
    rt: Runtime,
    body: RequestCreate,
    now: datetime,
    idempotency_key: str | None = None,
    vouched_by: str | None = None,
) -> Intake:
    """File a request from a web form. ``vouched_by`` names a trusted intake system whose
    assertion already proved the subject's identity (no code is sent then)."""
    body.check_type_fields()
    if idempotency_key is not None:
        replay = await replay_idempotent(session, rt=rt, key=idempotency_key, body=body, now=now)
        if replay is not None:
            return replay
    if not vouched_by:
        return await _file_unvouched(session, rt=rt, body=body, now=now, key=idempotency_key)
    method = "assertion"
    req, token = _new_request(rt, body, channel="web", received_at=now, now=now, method=method)
    session.add(req)
    await audit.record(
        session,
        actor=(vouched_by and f"intake:{vouched_by}") or SUBJECT,
        action="request.received",
        now=now,
        request_id=req.id,
        details={
            "type": req.type,
            "channel": "web",
            "jurisdiction": req.jurisdiction,
            "verification": method,
        },
    )
    verification: dict[str, Any]
    if vouched_by:
        await _identity_verified(
            session, rt, req, how="assertion", by=f"intake:{vouched_by}", now=now
        )
        verification = {"method": "assertion", "expires_at": None}
    elif method == "email_code":
        code, row = await identity.issue_code(
            session, settings=rt.settings, sealer=rt.sealer, request_id=req.id, now=now
        )
        await _notify(
            session,
            rt,
            req,
            "verification_code",
            now=now,
            email=str(body.subject.email),
            code=code,
            valid_minutes=rt.settings.verification_code_minutes,
        )
        verification = {"method": "email_code", "expires_at": row.expires_at}
    else:
        verification = {"method": "document", "expires_at": req.verification_expires_at}
    answer = {
        "id": req.id,
        "type": req.type,
        "status": req.status,
        "received_at": req.received_at,
        "due_date": req.due_date,
        "due_at": req.due_at,
        "status_token": token,
        "verification": verification,
    }
    if idempotency_key is not None:
        session.add(IdempotencyRecord(**_idempotency_row(rt, idempotency_key, body, answer, now)))
    log.info("requests.received", extra={"request_id": req.id, "type": req.type})
    return Intake(answer=answer)


def _idempotency_row(
    rt: Runtime, key: str, body: RequestCreate, answer: dict[str, Any], now: datetime
) -> dict[str, Any]:
    key_digest = token_digest(key)
    return {
        "key_digest": key_digest,
        "body_digest": _body_digest(body),
        "request_id": answer["id"],
        "response_sealed": rt.sealer.seal_json(_jsonable(answer), context=key_digest),
        "created_at": now,
    }


async def _file_unvouched(
    session: AsyncSession, *, rt: Runtime, body: RequestCreate, now: datetime, key: str | None
) -> Intake:
    """The usual intake (no trusted system vouches for the subject): the request waits for an
    e-mail code or a document. Its rows (request, audit event, code, outbox message and
    delivery job, idempotency record) are built as plain values and written in one statement
    (``rows.insert_rows``), not through the ORM's unit of work: this is the busiest write of
    the service, and the ORM flush of five objects was most of its cost."""
    method = _verification_method(rt, body.type)
    values, token = _request_values(
        rt, body, channel="web", received_at=now, now=now, method=method
    )
    request_id = values["id"]
    new: list[rows.Row] = [
        (REQUEST_TABLE, values),
        (
            audit.PENDING_TABLE,
            audit.pending_row(
                actor=SUBJECT,
                action="request.received",
                now=now,
                request_id=request_id,
                details={
                    "type": values["type"],
                    "channel": "web",
                    "jurisdiction": values["jurisdiction"],
                    "verification": method,
                },
            ),
        ),
    ]
    verification: dict[str, Any]
    if method == "email_code":
        code, code_values = identity.code_row(
            settings=rt.settings, sealer=rt.sealer, request_id=request_id, now=now
        )
        new.append((identity.CODE_TABLE, code_values))
        new += mail.mail_rows(
            settings=rt.settings,
            sealer=rt.sealer,
            now=now,
            to=str(body.subject.email),
            template="verification_code",
            language=values["language"],
            context=_mail_context(
                rt,
                request_id=request_id,
                request_type=values["type"],
                received_at=now,
                due_date=values["due_date"],
                code=code,
                valid_minutes=rt.settings.verification_code_minutes,
            ),
            request_id=request_id,
        )
        verification = {"method": "email_code", "expires_at": code_values["expires_at"]}
    else:
        verification = {"method": "document", "expires_at": values["verification_expires_at"]}
    answer = {
        "id": request_id,
        "type": values["type"],
        "status": values["status"],
        "received_at": values["received_at"],
        "due_date": values["due_date"],
        "due_at": values["due_at"],
        "status_token": token,
        "verification": verification,
    }
    if key is not None:
        new.append((IDEMPOTENCY_TABLE, _idempotency_row(rt, key, body, answer, now)))
    queues_mail = method == "email_code"
    await rows.insert_rows(session, new, notify_jobs=queues_mail, whole_unit=True)
    if queues_mail:
        # The job was written here, not through jobs.enqueue: wake the local workers on
        # commit as it would (on PostgreSQL the statement itself sent the NOTIFY; elsewhere
        # there are only local workers to wake).
        after_commit(session, "jobs.wake", wakeup.wake_local)
    log.info("requests.received", extra={"request_id": request_id, "type": values["type"]})
    return Intake(answer=answer)


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(value, default=lambda v: v.isoformat()))


def _new_request(
    rt: Runtime,
    body: RequestCreate,
    *,
    channel: str,
    received_at: datetime,
    now: datetime,
    method: str,
) -> tuple[DsrRequest, str]:
    values, token = _request_values(
        rt, body, channel=channel, received_at=received_at, now=now, method=method
    )
    return DsrRequest(**values), token


def _request_values(
    rt: Runtime,
    body: RequestCreate,
    *,
    channel: str,
    received_at: datetime,
    now: datetime,
    method: str,
) -> tuple[dict[str, Any], str]:
    """A new request's column values (every column: they may be written without the ORM),
    with its deadline, and its status token (which only its digest is kept of)."""
    request_id = new_id("req")
    token = secrets.token_urlsafe(32)
    subject = body.subject.model_dump(mode="json", exclude_none=True)
    content = {
        key: value
        for key, value in {
            "details": body.details,
            "rectifications": (
                None
                if body.rectifications is None
                else [r.model_dump() for r in body.rectifications]
            ),
            "objection": body.objection and body.objection.model_dump(),
        }.items()
        if value is not None
    }
    needs_proof = method not in ("assertion", "verified")
    jurisdiction = body.jurisdiction or rt.settings.default_jurisdiction
    wait_started = received_at if needs_proof else None
    # Not extended yet: the original deadline is the current one.
    deadline = _deadline_from(
        rt,
        jurisdiction=jurisdiction,
        received_at=received_at,
        wait_started=wait_started,
        wait_ended=None,
        now=now,
        extended=False,
    )
    values: dict[str, Any] = {
        "id": request_id,
        "type": str(body.type),
        "status": S.pending_verification.value,
        "channel": str(channel),
        "jurisdiction": jurisdiction,
        "language": body.language or rt.settings.default_language,
        "email_index": rt.sealer.blind_index(normalise_email(str(body.subject.email))),
        "subject_sealed": rt.sealer.seal_json(subject, context=request_id),
        "content_sealed": rt.sealer.seal_json(content, context=request_id) if content else None,
        "status_token_digest": token_digest(token),
        "received_at": received_at,
        "created_at": now,
        "updated_at": now,
        "original_due_date": deadline.due_date,
        "due_date": deadline.due_date,
        "due_at": deadline.due_at,
        "extended": False,
        "extension_reason": None,
        "extended_at": None,
        "reminders_sent": "",
        "verification_method": "none" if not needs_proof else method,
        # The subject has a window to prove who they are; a check left to staff has none.
        "verification_expires_at": (
            now + timedelta(days=rt.settings.verification_window_days)
            if needs_proof and method != "staff"
            else None
        ),
        "identity_verified_at": None,
        "identity_verified_by": None,
        "identity_method": None,
        "identity_wait_started_at": wait_started,
        "identity_wait_ended_at": None,
        "rejection_reason": None,
        "rejection_detail": None,
        "closed_at": None,
    }
    return values, token


async def create_staff_request(
    session: AsyncSession, *, rt: Runtime, body: StaffRequestCreate, actor: str, now: datetime
) -> DsrRequest:
    """A request received by another channel, entered by staff; the clock runs from receipt."""
    body.check_type_fields()
    received_at = utc(body.received_at)
    if received_at > now + timedelta(minutes=5):
        raise InvalidInput.field(("body", "received_at"), "must not be in the future")
    method = "verified" if body.identity_verified else "staff"
    req, _ = _new_request(
        rt, body, channel=body.channel, received_at=received_at, now=now, method=method
    )
    session.add(req)
    await audit.record(
        session,
        actor=actor,
        action="request.received",
        now=now,
        request_id=req.id,
        details={
            "type": req.type,
            "channel": body.channel,
            "jurisdiction": req.jurisdiction,
            "received_at": received_at.isoformat(),
            "identity_verified": body.identity_verified,
        },
    )
    await _notify(session, rt, req, "acknowledgement", now=now)
    if body.identity_verified:
        await _identity_verified(session, rt, req, how="staff", by=actor, now=now)
    return req


# --- identity -------------------------------------------------------------------------------


async def _identity_verified(
    session: AsyncSession, rt: Runtime, req: DsrRequest, *, how: str, by: str, now: datetime
) -> None:
    """Identity is proved: record how and by whom, restart or resume the clock where the
    regime says so, acknowledge, then approve or wait for a staff review."""
    req.identity_verified_at, req.identity_method, req.identity_verified_by = now, how, by
    if req.identity_wait_started_at is not None and req.identity_wait_ended_at is None:
        req.identity_wait_ended_at = now
    req.verification_expires_at = None
    _refresh_deadline(rt, req, now=now)
    await audit.record(
        session,
        actor=by,
        action="identity.verified",
        now=now,
        request_id=req.id,
        details={"method": how, "due_date": req.due_date.isoformat()},
    )
    if req.channel == "web":  # other channels were acknowledged when staff entered them
        await _notify(session, rt, req, "acknowledgement", now=now)
    if req.type in rt.settings.review_types:
        if req.status != S.pending_review:
            _move(req, check_transition(req.status, S.pending_review, action="review"), now=now)
            await audit.record(
                session,
                actor=SYSTEM,
                action="request.review_needed",
                now=now,
                request_id=req.id,
                details={"policy": "review_types"},
            )
    else:
        await _approve(session, rt, req, actor=SYSTEM, now=now)


def _move(req: DsrRequest, status: RequestStatus, *, now: datetime) -> None:
    req.status = status
    req.updated_at = now
    if status not in OPEN:
        req.closed_at = now


async def verify_code(
    session: AsyncSession, *, rt: Runtime, req: DsrRequest, code: str, now: datetime
) -> DsrRequest:
    if req.status != S.pending_verification or req.verification_method != "email_code":
        raise Conflict(
            f"this request is {req.status} and takes no verification code",
            extra={"current_status": req.status},
        )
    await identity.check_code(session, sealer=rt.sealer, request_id=req.id, code=code, now=now)
    await _identity_verified(session, rt, req, how="email_code", by=SUBJECT, now=now)
    return req


async def resend_code(
    session: AsyncSession, *, rt: Runtime, req: DsrRequest, now: datetime
) -> dict[str, Any]:
    if req.status != S.pending_verification or req.verification_method != "email_code":
        raise Conflict(
            f"this request is {req.status} and takes no verification code",
            extra={"current_status": req.status},
        )
    code = await identity.reissue_code(
        session, settings=rt.settings, sealer=rt.sealer, request_id=req.id, now=now
    )
    await _notify(
        session,
        rt,
        req,
        "verification_code",
        now=now,
        code=code,
        valid_minutes=rt.settings.verification_code_minutes,
    )
    await audit.record(
        session, actor=SUBJECT, action="identity.code_resent", now=now, request_id=req.id
    )
    expires = now + timedelta(minutes=rt.settings.verification_code_minutes)
    return {"method": "email_code", "expires_at": expires}


async def upload_document(
    session: AsyncSession,
    *,
    rt: Runtime,
    req: DsrRequest,
    upload: identity.Readable,
    now: datetime,
) -> DsrRequest:
    if req.verification_method != "document" or req.identity_verified_at is not None:
        raise Conflict(
            "this request does not ask for an identity document",
            extra={"current_status": req.status},
        )
    if req.status not in (S.pending_verification, S.pending_review):
        raise Conflict(
            f"cannot upload a document to a request that is {req.status}",
            extra={"current_status": req.status},
        )
    document = await identity.store_document(
        session, settings=rt.settings, sealer=rt.sealer, request_id=req.id, upload=upload, now=now
    )
    if req.status == S.pending_verification:
        _move(req, S.pending_review, now=now)
    await audit.record(
        session,
        actor=SUBJECT,
        action="identity.document_uploaded",
        now=now,
        request_id=req.id,
        details={"content_type": document.content_type, "size_bytes": document.size_bytes},
    )
    return req


async def approve_identity(
    session: AsyncSession, *, rt: Runtime, req: DsrRequest, actor: str, now: datetime
) -> DsrRequest:
    if req.identity_verified_at is not None:
        raise Conflict(
            "the identity of this request is already verified", extra={"current_status": req.status}
        )
    require_open(req.status, action="verify the identity of")
    if req.status not in (S.pending_verification, S.pending_review):
        raise Conflict(f"cannot verify the identity of a request that is {req.status}")
    document = await identity.discard_document(session, settings=rt.settings, request_id=req.id)
    await identity.drop_code(session, request_id=req.id)
    how = "document" if document is not None else "staff"
    if document is not None:
        await audit.record(
            session,
            actor=actor,
            action="identity.document_deleted",
            now=now,
            request_id=req.id,
            details={"decision": "approved"},
        )
    await _identity_verified(session, rt, req, how=how, by=actor, now=now)
    return req


async def reject_identity(
    session: AsyncSession,
    *,
    rt: Runtime,
    req: DsrRequest,
    actor: str,
    now: datetime,
    note: str | None = None,
) -> DsrRequest:
    if req.identity_verified_at is not None:
        raise Conflict(
            "the identity of this request is already verified", extra={"current_status": req.status}
        )
    return await reject(
        session,
        rt=rt,
        req=req,
        actor=actor,
        now=now,
        body=RejectIn(reason=RejectionReason.identity_not_verified, detail=note),
    )


# --- staff decisions ------------------------------------------------------------------------


async def _approve(
    session: AsyncSession, rt: Runtime, req: DsrRequest, *, actor: str, now: datetime
) -> None:
    _move(req, check_transition(req.status, S.in_progress, action="approve"), now=now)
    await audit.record(session, actor=actor, action="request.approved", now=now, request_id=req.id)
    await queue_fan_out(session, request_id=req.id, now=now)


async def queue_fan_out(session: AsyncSession, *, request_id: str, now: datetime) -> None:
    """Send an approved request to its connectors (the connectors domain runs this job)."""
    await jobs.enqueue(
        session,
        FAN_OUT_KIND,
        {"request_id": request_id},
        now=now,
        request_id=request_id,
        queueing_lock=f"fan_out:{request_id}",
    )


async def approve(
    session: AsyncSession, *, rt: Runtime, req: DsrRequest, actor: str, now: datetime
) -> DsrRequest:
    if req.status == S.pending_review and req.identity_verified_at is None:
        raise Conflict(
            "verify the identity first (/identity/approve)", extra={"current_status": req.status}
        )
    if req.status != S.pending_review:
        raise Conflict(
            f"cannot approve a request that is {req.status}", extra={"current_status": req.status}
        )
    await _approve(session, rt, req, actor=actor, now=now)
    return req


async def _close(session: AsyncSession, rt: Runtime, req: DsrRequest) -> None:
    """Nothing of the identity proof outlives the decision."""
    await identity.discard_document(session, settings=rt.settings, request_id=req.id)
    await identity.drop_code(session, request_id=req.id)


async def reject(
    session: AsyncSession,
    *,
    rt: Runtime,
    req: DsrRequest,
    actor: str,
    now: datetime,
    body: RejectIn,
) -> DsrRequest:
    _move(req, check_transition(req.status, S.rejected, action="reject"), now=now)
    req.rejection_reason, req.rejection_detail = body.reason, body.detail
    await _close(session, rt, req)
    await audit.record(
        session,
        actor=actor,
        action="request.rejected",
        now=now,
        request_id=req.id,
        details={"reason": body.reason},
    )
    regime = get_regime(req.jurisdiction)
    await _notify(
        session,
        rt,
        req,
        "rejection",
        now=now,
        reason_code=body.reason,
        detail=body.detail or "",
        authority_name=regime.authority_name,
        authority_url=regime.authority_url,
    )
    return req


async def cancel(
    session: AsyncSession, *, rt: Runtime, req: DsrRequest, actor: str, now: datetime
) -> DsrRequest:
    _move(req, check_transition(req.status, S.cancelled, action="cancel"), now=now)
    await _close(session, rt, req)
    await audit.record(session, actor=actor, action="request.cancelled", now=now, request_id=req.id)
    await _notify(session, rt, req, "cancellation", now=now)
    return req


async def extend(
    session: AsyncSession, *, rt: Runtime, req: DsrRequest, actor: str, now: datetime, reason: str
) -> DsrRequest:
    """Art. 12(3): once, before the original deadline, with the reasons told to the subject."""
    require_open(req.status, action="extend")
    if req.extended:
        raise Conflict("the deadline of this request was already extended")
    if now > utc(req.due_at):
        raise Conflict("the deadline has passed; it can no longer be extended")
    try:
        extended = deadline_of(rt, req, now=now, extended=True)
    except NoExtension as exc:
        raise Conflict(f"the {req.jurisdiction} regime allows no extension") from exc
    req.extended, req.extension_reason, req.extended_at = True, reason, now
    req.due_date, req.due_at, req.updated_at = extended.due_date, extended.due_at, now
    req.reminders_sent = ""
    await audit.record(
        session,
        actor=actor,
        action="deadline.extended",
        now=now,
        request_id=req.id,
        details={"due_date": req.due_date.isoformat()},
    )
    await _notify(session, rt, req, "extension", now=now, reason=reason, new_due_date=req.due_date)
    return req


async def complete(
    session: AsyncSession,
    *,
    rt: Runtime,
    req: DsrRequest,
    now: datetime,
    outcomes: list[dict[str, str]],
) -> DsrRequest:
    _move(req, check_transition(req.status, S.completed, action="complete"), now=now)
    await audit.record(
        session,
        actor=SYSTEM,
        action="request.completed",
        now=now,
        request_id=req.id,
        details={"systems": len(outcomes)},
    )
    await _notify(session, rt, req, "completion", now=now, outcomes=outcomes)
    return req


async def lock(session: AsyncSession, request_id: str) -> DsrRequest | None:
    """The request, row-locked for the rest of the unit of work. Everything that settles a
    request's status from its connector jobs takes this lock first, so two jobs finishing at
    once cannot both miss that they were the last."""
    return await session.get(DsrRequest, request_id, with_for_update=True)


async def set_progress(
    session: AsyncSession,
    *,
    req: DsrRequest,
    status: RequestStatus,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> DsrRequest:
    """``in_progress`` <-> ``action_required``: a connector job failed for good or waits on
    staff, or staff dealt with it."""
    if status not in (S.in_progress, S.action_required):
        raise ValueError(f"set_progress does not move to {status}")
    _move(req, check_transition(req.status, status, action="update"), now=now)
    action = "request.action_required" if status == S.action_required else "request.resumed"
    await audit.record(
        session, actor=SYSTEM, action=action, now=now, request_id=req.id, details=details
    )
    return req


async def expire_unverified(
    session: AsyncSession, *, rt: Runtime, now: datetime, batch: int = 200
) -> int:
    """Requests whose identity was not proved within the window expire, with an e-mail."""
    rows = await session.exec(
        select(DsrRequest)
        .where(
            col(DsrRequest.status) == S.pending_verification,
            col(DsrRequest.verification_expires_at) <= now,
        )
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    count = 0
    for req in rows.all():
        _move(req, S.expired, now=now)
        await _close(session, rt, req)
        await audit.record(
            session, actor=SYSTEM, action="request.expired", now=now, request_id=req.id
        )
        await _notify(
            session, rt, req, "expiry", now=now, window_days=rt.settings.verification_window_days
        )
        count += 1
    return count


async def open_due_by(session: AsyncSession, *, horizon: date) -> list[DsrRequest]:
    """Open requests due on or before ``horizon`` (the reminder sweep's candidates), locked
    so that two sweeping workers do not remind twice."""
    rows = await session.exec(
        select(DsrRequest)
        .where(col(DsrRequest.status).in_(list(OPEN)), col(DsrRequest.due_date) <= horizon)
        .with_for_update(skip_locked=True)
    )
    return list(rows.all())


DUPLICATES_SHOWN = 20


async def duplicates_of(session: AsyncSession, req: DsrRequest) -> list[str]:
    """Other open requests of the same person (by keyed hash of the e-mail), oldest first. A
    Core query built once."""
    conn = await session.connection()
    result = await conn.execute(_DUPLICATES, {"email_index": req.email_index, "request_id": req.id})
    return list(result.scalars().all())


_R = REQUEST_TABLE.c


def _open_requests_of(email_index: Any) -> Any:
    """The duplicates rule: the open requests filed under this e-mail's keyed hash."""
    return and_(_R.email_index == email_index, _R.status.in_(constant_list(sorted(OPEN))))


_DUPLICATES = (
    sa_select(_R.id)
    .where(_open_requests_of(bindparam("email_index")), _R.id != bindparam("request_id"))
    .order_by(_R.id)
    .limit(DUPLICATES_SHOWN)
)
# The request's row first, then its duplicates' rows (a person rarely has more than one open
# request: the extra columns cost nothing); the request's row also carries its trail.
_WITH_DUPLICATES = (
    sa_select(
        REQUEST_TABLE,
        case((_R.id == bindparam("request_id"), audit.trail_column()), else_=None).label("trail"),
    )
    .where(
        or_(
            _R.id == bindparam("request_id"),
            _open_requests_of(
                sa_select(_R.email_index).where(_R.id == bindparam("request_id")).scalar_subquery()
            ),
        )
    )
    .order_by(case((_R.id == bindparam("request_id"), 0), else_=1), _R.id)
    .limit(DUPLICATES_SHOWN + 1)
)
