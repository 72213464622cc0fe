"""The connector registry and the reading of connector jobs.

Signing secrets are generated here, shown once, and stored sealed (AES-GCM, bound to the
connector id). A rotation keeps the previous secret valid for ``DSR_SECRET_GRACE_HOURS``:
callbacks signed with it are accepted and outgoing calls carry both signatures, so a
connector can switch over without dropping an answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, delete, func
from sqlalchemy import select as sa_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import service as audit
from app.connectors import signing
from app.connectors.models import Connector, ConnectorJob, ConnectorMode
from app.connectors.schemas import ConnectorCreate, ConnectorPatch
from app.connectors.urls import UrlRefused, check_url
from app.db import flush_pending
from app.errors import Conflict, InvalidInput, NotFound
from app.kit.clock import utc
from app.kit.ids import new_id
from app.runtime import Runtime

_JSON_FIELDS = ("request_types", "identity_types", "categories", "processing")


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def decoded(connector: Connector) -> dict[str, Any]:
    """The registry entry with its JSON columns read back."""
    found = {name: json.loads(getattr(connector, name)) for name in _JSON_FIELDS}
    provided = connector.provided_categories
    found["provided_categories"] = json.loads(provided) if provided is not None else None
    return found


def view(connector: Connector, *, now: datetime) -> dict[str, Any]:
    grace = connector.previous_secret_until
    return {
        "id": connector.id,
        "name": connector.name,
        "url": connector.url,
        "mode": connector.mode,
        "enabled": connector.enabled,
        **decoded(connector),
        "timeout_s": connector.timeout_s,
        "max_attempts": connector.max_attempts,
        "max_concurrency": connector.max_concurrency,
        "callback_timeout_s": connector.callback_timeout_s,
        "created_at": connector.created_at,
        "updated_at": connector.updated_at,
        "deleted_at": connector.deleted_at,
        "secret_rotated_grace_until": grace if grace and utc(grace) > now else None,
    }


def _check_url(rt: Runtime, url: str | None, mode: str) -> None:
    if mode == ConnectorMode.webhook and not url:
        raise InvalidInput.field(("body", "url"), "required for a webhook connector")
    if url:
        try:
            check_url(url, allowed_hosts=rt.settings.connector_allowed_hosts)
        except UrlRefused as exc:
            raise InvalidInput.field(("body", "url"), str(exc)) from None


async def _check_name_free(session: AsyncSession, name: str, *, other_than: str | None) -> None:
    query = select(Connector.id).where(
        func.lower(Connector.name) == name.lower(), col(Connector.deleted_at).is_(None)
    )
    if other_than:
        query = query.where(col(Connector.id) != other_than)
    if (await session.exec(query)).first() is not None:
        raise Conflict(f"a connector named {name!r} already exists")


async def create(
    session: AsyncSession, *, rt: Runtime, body: ConnectorCreate, actor: str, now: datetime
) -> tuple[Connector, str]:
    """Register a connector. Returns it and its signing secret (the only time it is shown)."""
    _check_url(rt, body.url, body.mode)
    await _check_name_free(session, body.name, other_than=None)
    connector_id = new_id("con")
    secret = signing.new_secret()
    connector = Connector(
        id=connector_id,
        name=body.name,
        url=body.url,
        mode=body.mode,
        enabled=body.enabled,
        request_types=_dump(sorted(set(body.request_types))),
        identity_types=_dump(sorted(set(body.identity_types))),
        categories=_dump(body.categories),
        provided_categories=None
        if body.provided_categories is None
        else _dump(body.provided_categories),
        processing=_dump(body.processing.model_dump()),
        timeout_s=body.timeout_s,
        max_attempts=body.max_attempts,
        max_concurrency=body.max_concurrency,
        callback_timeout_s=body.callback_timeout_s,
        secret_sealed=rt.sealer.seal(secret.encode(), context=connector_id),
        created_at=now,
        updated_at=now,
    )
    session.add(connector)
    await audit.record(
        session,
        actor=actor,
        action="connector.created",
        now=now,
        details={"connector_id": connector_id, "name": body.name, "mode": body.mode},
    )
    return connector, secret


async def list_all(session: AsyncSession, *, include_deleted: bool = False) -> list[Connector]:
    query = select(Connector).order_by(col(Connector.created_at))
    if not include_deleted:
        query = query.where(col(Connector.deleted_at).is_(None))
    return list((await session.exec(query)).all())


async def get(session: AsyncSession, connector_id: str, *, for_update: bool = False) -> Connector:
    connector = (
        await session.get(Connector, connector_id, with_for_update=for_update)
        if len(connector_id) <= 40
        else None
    )
    if connector is None:
        raise NotFound("no such connector")
    return connector


async def update(
    session: AsyncSession,
    *,
    rt: Runtime,
    connector: Connector,
    body: ConnectorPatch,
    actor: str,
    now: datetime,
) -> Connector:
    if connector.deleted_at is not None:
        raise Conflict("this connector was deleted; register a new one")
    changes = body.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is None and name not in ("url", "callback_timeout_s", "provided_categories"):
            raise InvalidInput.field(("body", name), "may not be null")
    mode = changes.get("mode", connector.mode)
    _check_url(rt, changes.get("url", connector.url), mode)
    if "name" in changes:
        await _check_name_free(session, changes["name"], other_than=connector.id)
    for name, value in changes.items():
        if name in ("request_types", "identity_types"):
            value = _dump(sorted(set(value)))
        elif name in ("categories", "processing"):
            value = _dump(value)
        elif name == "provided_categories" and value is not None:
            value = _dump(value)
        setattr(connector, name, value)
    connector.updated_at = now
    session.add(connector)
    await audit.record(
        session,
        actor=actor,
        action="connector.updated",
        now=now,
        details={"connector_id": connector.id, "fields": sorted(changes)},
    )
    return connector


async def remove(session: AsyncSession, *, connector: Connector, actor: str, now: datetime) -> bool:
    """Delete a connector. One with history is disabled and kept (its jobs, outcomes and
    Art. 15 information stay explainable); returns True when it was only disabled."""
    if connector.deleted_at is not None:
        raise NotFound("no such connector")
    has_jobs = (
        await session.exec(
            select(ConnectorJob.id).where(col(ConnectorJob.connector_id) == connector.id).limit(1)
        )
    ).first() is not None
    await audit.record(
        session,
        actor=actor,
        action="connector.deleted",
        now=now,
        details={"connector_id": connector.id, "kept_for_history": has_jobs},
    )
    if has_jobs:
        connector.enabled = False
        connector.deleted_at = connector.updated_at = now
        session.add(connector)
        return True
    await session.exec(delete(Connector).where(col(Connector.id) == connector.id))
    return False


async def rotate_secret(
    session: AsyncSession, *, rt: Runtime, connector: Connector, actor: str, now: datetime
) -> str:
    if connector.deleted_at is not None:
        raise NotFound("no such connector")
    secret = signing.new_secret()
    connector.previous_secret_sealed = connector.secret_sealed
    connector.previous_secret_until = now + timedelta(hours=rt.settings.secret_grace_hours)
    connector.secret_sealed = rt.sealer.seal(secret.encode(), context=connector.id)
    connector.updated_at = now
    session.add(connector)
    await audit.record(
        session,
        actor=actor,
        action="connector.secret_rotated",
        now=now,
        details={"connector_id": connector.id},
    )
    return secret


def signing_secrets(rt: Runtime, connector: Connector, *, now: datetime) -> list[str]:
    """The current secret, then the previous one while its grace period lasts."""
    found = [rt.sealer.open(connector.secret_sealed, context=connector.id).decode()]
    until = connector.previous_secret_until
    if connector.previous_secret_sealed and until is not None and utc(until) > now:
        found.append(
            rt.sealer.open(connector.previous_secret_sealed, context=connector.id).decode()
        )
    return found


async def eligible_for(
    session: AsyncSession, *, request_type: str, identity_types: Sequence[str]
) -> list[Connector]:
    """Enabled connectors that handle this type and know at least one identity the request
    carries."""
    rows = await session.exec(
        select(Connector).where(
            col(Connector.enabled).is_(True), col(Connector.deleted_at).is_(None)
        )
    )
    wanted = set(identity_types)
    return [
        c
        for c in rows.all()
        if request_type in json.loads(c.request_types)
        and wanted.intersection(json.loads(c.identity_types))
    ]


# --- connector jobs, read side ------------------------------------------------------------


async def jobs_for_request(
    session: AsyncSession, request_id: str
) -> list[tuple[ConnectorJob, Connector]]:
    rows = await session.exec(
        select(ConnectorJob, Connector)
        .join(Connector, col(Connector.id) == col(ConnectorJob.connector_id))
        .where(col(ConnectorJob.request_id) == request_id)
        .order_by(col(Connector.name))
    )
    return [(job, connector) for job, connector in rows.all()]


_JOB_TABLE: Table = ConnectorJob.__table__  # type: ignore[attr-defined]
_CONNECTOR_TABLE: Table = Connector.__table__  # type: ignore[attr-defined]
# The connector's columns are labelled apart: both tables have ``id`` and timestamps.
_JOBS_TO_SHOW = (
    sa_select(_JOB_TABLE, *(c.label(f"connector__{c.name}") for c in _CONNECTOR_TABLE.columns))
    .join(_CONNECTOR_TABLE, _CONNECTOR_TABLE.c.id == _JOB_TABLE.c.connector_id)
    .where(_JOB_TABLE.c.request_id == bindparam("request_id"))
    .order_by(_CONNECTOR_TABLE.c.name)
)


async def jobs_to_show(
    session: AsyncSession, request_id: str
) -> list[tuple[ConnectorJob, Connector]]:
    """``jobs_for_request`` for views, which only read: one statement built once, rows
    turned into models without the session (``model_construct``), so nothing tracks them
    (the ORM load built its select on every call and tracked both entities: about 8% of a
    staff detail view of a request with ten jobs). A unit of work's pending changes are
    flushed first, as an ORM query would (views also answer writes)."""
    await flush_pending(session)
    conn = await session.connection()
    rows = (await conn.execute(_JOBS_TO_SHOW, {"request_id": request_id})).all()
    pairs = []
    for row in rows:
        fields = row._mapping
        pairs.append(
            (
                ConnectorJob.model_construct(**{c.name: fields[c.name] for c in _JOB_TABLE.c}),
                Connector.model_construct(
                    **{c.name: fields[f"connector__{c.name}"] for c in _CONNECTOR_TABLE.c}
                ),
            )
        )
    return pairs


def job_view(job: ConnectorJob, connector: Connector) -> dict[str, Any]:
    return {
        "id": job.id,
        "connector_id": connector.id,
        "connector_name": connector.name,
        "status": job.status,
        "attempts": job.attempts,
        "last_error": job.last_error,
        "outcome": job.outcome,
        "retained": json.loads(job.retained) if job.retained else [],
        "data_files": len(json.loads(job.data_files)) if job.data_files else 0,
        "callback_deadline": job.callback_deadline,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
    }


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    rows = await session.exec(
        select(ConnectorJob.status, func.count()).group_by(col(ConnectorJob.status))
    )
    return {status: count for status, count in rows.all()}


async def oldest_unfinished(session: AsyncSession) -> datetime | None:
    return (
        await session.exec(
            select(func.min(ConnectorJob.created_at)).where(
                col(ConnectorJob.status).not_in(["succeeded", "failed"])
            )
        )
    ).one()


# GDPR Art. 19: recipients are told of a rectification, erasure or restriction.
NOTIFY_RECIPIENTS = frozenset({"erasure", "rectification", "restriction"})
NOTIFYING_OUTCOMES = frozenset({"erased", "retained", "rectified", "restricted"})


def recipients_notified(request_type: str, job: ConnectorJob, connector: Connector) -> list[str]:
    """The recipients registered for a system that changed the data (Art. 19)."""
    if request_type not in NOTIFY_RECIPIENTS or job.outcome not in NOTIFYING_OUTCOMES:
        return []
    return list(decoded(connector)["processing"].get("recipients") or [])


def outcomes_of(
    pairs: list[tuple[ConnectorJob, Connector]], *, request_type: str
) -> list[dict[str, Any]]:
    """Each system's outcome, for the completion e-mail and the answer package."""
    return [
        {
            "system": connector.name,
            "outcome": job.outcome,
            "retained": json.loads(job.retained) if job.retained else [],
            "recipients_notified": recipients_notified(request_type, job, connector),
        }
        for job, connector in pairs
        if job.status == "succeeded"
    ]


async def requests_holding_data(
    session: AsyncSession, *, statuses: Sequence[str], limit: int = 200
) -> list[str]:
    """Requests in one of ``statuses`` whose jobs still hold stored connector data."""
    from app.requests.models import DsrRequest

    rows = await session.exec(
        select(ConnectorJob.request_id)
        .join(DsrRequest, col(DsrRequest.id) == col(ConnectorJob.request_id))
        .where(col(ConnectorJob.data_files).is_not(None), col(DsrRequest.status).in_(statuses))
        .distinct()
        .limit(limit)
    )
    return list(rows.all())


def data_files_of(job: ConnectorJob) -> list[dict[str, Any]]:
    return json.loads(job.data_files) if job.data_files else []


async def delete_jobs(session: AsyncSession, request_id: str) -> None:
    """Remove a request's connector jobs: a staff re-run has kept them as its history
    (``app.reruns``), and the fan-out then creates the new run's."""
    await session.exec(delete(ConnectorJob).where(col(ConnectorJob.request_id) == request_id))
