"""Shaping requests into the contract's views (subject, staff detail, staff list)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import service as audit
from app.connectors import service as connectors
from app.deadlines import days_left, get_regime, is_overdue
from app.exports import service as exports
from app.identity import service as identity
from app.kit.clock import utc
from app.notifications.templates import outcome_summary
from app.requests import service
from app.requests.models import DsrRequest
from app.requests.states import OPEN, RequestStatus
from app.runtime import Runtime


def _verification(req: DsrRequest) -> dict[str, Any] | None:
    if req.status != RequestStatus.pending_verification:
        return None
    return {"method": req.verification_method, "expires_at": req.verification_expires_at}


EXPORT_TYPES = frozenset({"access", "portability"})
# The states machine (``app.requests.states.ALLOWED``) has no way back to these from
# ``in_progress``, where the fan-out and the package start.
NEVER_APPROVED = frozenset(
    {RequestStatus.pending_verification, RequestStatus.pending_review, RequestStatus.expired}
)
HAS_OUTCOMES = frozenset(
    {RequestStatus.in_progress, RequestStatus.action_required, RequestStatus.completed}
)


async def outcomes_of(session: AsyncSession, rt: Runtime, req: DsrRequest) -> list[dict[str, Any]]:
    """Each system that answered, in plain words in the request's language (no connector
    internals: no URLs, errors or attempt counts)."""
    if req.status not in HAS_OUTCOMES:
        return []
    return _in_words(rt, req, await connectors.jobs_to_show(session, req.id))


def _in_words(rt: Runtime, req: DsrRequest, pairs: list[Any]) -> list[dict[str, Any]]:
    language, default = req.language, rt.settings.default_language
    return [
        {**outcome, "summary": outcome_summary(outcome["outcome"], language, default)}
        for outcome in connectors.outcomes_of(pairs, request_type=req.type)
    ]


async def subject_view(session: AsyncSession, rt: Runtime, req: DsrRequest) -> dict[str, Any]:
    return {
        "id": req.id,
        "type": req.type,
        "status": req.status,
        "received_at": req.received_at,
        "due_date": req.due_date,
        "due_at": req.due_at,
        "extended": req.extended,
        "rejection_reason": req.rejection_reason,
        "verification": _verification(req),
        "export": exports.view(await exports.package_to_show(session, req.id))
        if req.type in EXPORT_TYPES
        else None,
        "outcomes": await outcomes_of(session, rt, req),
    }


def _clock_fields(rt: Runtime, req: DsrRequest, now: datetime) -> dict[str, Any]:
    is_open = RequestStatus(req.status) in OPEN
    return {
        "days_left": days_left(req.due_date, now=now, tz=rt.settings.tz),
        "overdue": is_open and is_overdue(utc(req.due_at), now=now),
    }


def list_item(rt: Runtime, req: DsrRequest, now: datetime) -> dict[str, Any]:
    return {
        "id": req.id,
        "type": req.type,
        "status": req.status,
        "channel": req.channel,
        "jurisdiction": req.jurisdiction,
        "email": service.subject_of(rt, req)["email"],
        "received_at": req.received_at,
        "due_date": req.due_date,
        "due_at": req.due_at,
        "extended": req.extended,
        "closed_at": req.closed_at,
        **_clock_fields(rt, req, now),
    }


async def staff_view(
    session: AsyncSession,
    rt: Runtime,
    req: DsrRequest,
    now: datetime,
    *,
    duplicates: list[str] | None = None,
    events: list[audit.TrailEvent] | None = None,
) -> dict[str, Any]:
    """The staff detail view. ``duplicates`` and ``events``: when the caller read them with
    the request (``service.read_for_staff``)."""
    content = service.content_of(rt, req)
    deadline = service.deadline_of(rt, req, now=now)
    regime = get_regime(req.jurisdiction)
    # Only document-verified requests can hold a document: skip the lookup for the others.
    document = (
        await identity.document_for(session, req.id)
        if req.verification_method == "document"
        else None
    )
    if events is None:
        events = await audit.events_for_request(session, req.id)
    # Connector jobs and answer packages exist only once a request has been approved; a
    # request still (or forever) short of approval has none: skip the two lookups.
    approved = req.status not in NEVER_APPROVED
    pairs = await connectors.jobs_to_show(session, req.id) if approved else []
    package = (
        await exports.package_to_show(session, req.id)
        if approved and req.type in EXPORT_TYPES
        else None
    )
    return {
        "id": req.id,
        "type": req.type,
        "status": req.status,
        "channel": req.channel,
        "jurisdiction": req.jurisdiction,
        "language": req.language,
        "subject": service.subject_of(rt, req),
        "details": content.get("details"),
        "rectifications": content.get("rectifications"),
        "objection": content.get("objection"),
        "verification": {
            "method": req.verification_method,
            "verified": req.identity_verified_at is not None,
            "verified_at": req.identity_verified_at,
            "verified_by": req.identity_verified_by,
            "verified_how": req.identity_method,
            "expires_at": req.verification_expires_at,
            "document": document
            and {
                "content_type": document.content_type,
                "size_bytes": document.size_bytes,
                "uploaded_at": document.uploaded_at,
            },
        },
        "received_at": req.received_at,
        "original_due_date": req.original_due_date,
        "due_date": req.due_date,
        "due_at": req.due_at,
        "extended": req.extended,
        "extension_reason": req.extension_reason,
        **_clock_fields(rt, req, now),
        "acknowledgement_due_date": service.acknowledgement_due_date(rt, req),
        "deadline_explanation": {
            "regime": regime.code,
            "regime_name": regime.name,
            "legal_reference": regime.legal_reference,
            "receipt_day": deadline.receipt_day,
            "start_day": deadline.start_day,
            "nominal_end": deadline.nominal_end,
            "paused_days": deadline.paused_days,
            "extended": deadline.extended,
            "steps": deadline.explanation,
        },
        "rejection_reason": req.rejection_reason,
        "rejection_detail": req.rejection_detail,
        "closed_at": req.closed_at,
        "duplicates": await service.duplicates_of(session, req)
        if duplicates is None
        else duplicates,
        "export": exports.view(package),
        "outcomes": _in_words(rt, req, pairs),
        "jobs": [connectors.job_view(job, connector) for job, connector in pairs],
        "events": [
            {
                "seq": e.seq,
                "at": e.created_at,
                "actor": e.actor,
                "action": e.action,
                "details": json.loads(e.details),
            }
            for e in events
        ],
    }
