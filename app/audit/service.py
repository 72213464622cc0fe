"""Append-only, hash-chained audit events.

Each event carries the hash of the one before it; the hash covers the event's sequence
number, time, actor, action, request id and details, so editing, deleting or reordering any
stored event breaks verification at that event.

Recording takes no lock: a unit of work writes its events to ``audit_pending`` as it
commits. A linker (the ``audit.link`` job every second, and every verification first) moves
them into the chain in order, under the one-row chain head's lock (``SELECT ... FOR
UPDATE`` on PostgreSQL; SQLite's writer lock does the same job), many at a time. Before,
every transaction took that lock to append its own events, and all writes of the service,
on every process, queued behind it. Details must never hold identity values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Table, bindparam, delete, insert, literal, null, text, union_all, update
from sqlalchemy import select as sa_select
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit.models import AuditChainHead, AuditEvent, AuditPending
from app.db import before_commit, constant_list, json_rows
from app.kit.clock import rfc3339

GENESIS = "0" * 64
EVENT_TABLE: Table = AuditEvent.__table__  # type: ignore[attr-defined]
PENDING_TABLE: Table = AuditPending.__table__  # type: ignore[attr-defined]
HEAD_TABLE: Table = AuditChainHead.__table__  # type: ignore[attr-defined]
HEAD_ID = 1


def event_hash(
    *,
    seq: int,
    prev_hash: str,
    created_at: datetime,
    actor: str,
    action: str,
    request_id: str | None,
    details: str,
) -> str:
    canonical = json.dumps(
        [seq, prev_hash, rfc3339(created_at), actor, action, request_id, details],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


PENDING = "dsr.audit.pending"


async def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    now: datetime,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add one event to the trail, in the caller's unit of work: written with it (just
    before it commits, in one insert), linked into the chain moments later."""
    session.info.setdefault(PENDING, []).append(
        pending_row(actor=actor, action=action, now=now, request_id=request_id, details=details)
    )
    before_commit(session, "audit", append_pending)


def pending_row(
    *,
    actor: str,
    action: str,
    now: datetime,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``audit_pending`` row of one event, for a caller that writes it with its own rows
    (intake writes all of its rows in one statement); ``record`` is the usual way."""
    body = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {
        "request_id": request_id,
        "actor": actor,
        "action": action,
        "details": body,
        "created_at": now,
    }


async def append_pending(session: AsyncSession) -> None:
    """Write the unit of work's events to ``audit_pending``: a plain insert, no lock."""
    pending: list[dict[str, Any]] = session.info.pop(PENDING, [])
    if not pending:
        return
    conn = await session.connection()
    await conn.execute(insert(PENDING_TABLE), pending)


LINK_BATCH = 2000


async def link_pending(session: AsyncSession, *, limit: int = LINK_BATCH) -> int:
    """Move up to ``limit`` pending events into the chain, oldest first: each gets the next
    sequence number and the hash of the one before. The head's row lock (SQLite's writer
    lock) keeps the chain linear when linkers run at once. Returns how many were linked."""
    conn = await session.connection()
    postgres = conn.dialect.name == "postgresql"
    lock = " FOR UPDATE" if postgres else ""
    head = (
        await conn.execute(text(f"SELECT seq, hash FROM audit_chain_head WHERE id = 1{lock}"))
    ).one_or_none()
    waiting = (
        await conn.execute(
            select(PENDING_TABLE).order_by(PENDING_TABLE.c.id).limit(limit)  # type: ignore[call-overload]
        )
    ).all()
    if not waiting:
        return 0
    seq, prev = (head[0], head[1]) if head is not None else (0, GENESIS)
    rows = []
    for event in waiting:
        fields = {
            "request_id": event.request_id,
            "actor": event.actor,
            "action": event.action,
            "details": event.details,
            "created_at": event.created_at,
        }
        seq += 1
        digest = event_hash(seq=seq, prev_hash=prev, **fields)
        rows.append({**fields, "seq": seq, "prev_hash": prev, "hash": digest})
        prev = digest
    if head is None:
        await conn.execute(
            text("INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, :hash)"),
            {"hash": GENESIS},
        )
    await conn.execute(insert(EVENT_TABLE), rows)
    await conn.execute(delete(PENDING_TABLE).where(PENDING_TABLE.c.id <= waiting[-1].id))
    await conn.execute(
        update(HEAD_TABLE).where(HEAD_TABLE.c.id == HEAD_ID).values(seq=seq, hash=prev)
    )
    return len(rows)


async def link_all(session_scope: Any) -> int:
    """Link every pending event, a batch per unit of work (verification starts with it)."""
    total = 0
    while True:
        async with session_scope() as session:
            linked = await link_pending(session)
        total += linked
        if linked < LINK_BATCH:
            return total


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    broken_at: int | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "events": self.events}
        return {
            "ok": False,
            "events": self.events,
            "broken_at": self.broken_at,
            "reason": self.reason,
        }


async def verify_chain(session: AsyncSession, *, batch: int = 5000) -> ChainReport:
    """Walk the whole chain in order, recomputing every hash and link."""
    prev_hash, expected_seq, count, last_seq = GENESIS, 1, 0, 0
    while True:
        rows = (
            await session.exec(
                select(AuditEvent)
                .where(AuditEvent.seq > last_seq)
                .order_by(col(AuditEvent.seq))
                .limit(batch)
            )
        ).all()
        if not rows:
            break
        for event in rows:
            if event.seq != expected_seq:
                return ChainReport(False, count, expected_seq, "an event is missing")
            if event.prev_hash != prev_hash:
                return ChainReport(
                    False, count, event.seq, "the link to the previous event is broken"
                )
            recomputed = event_hash(
                seq=event.seq,
                prev_hash=event.prev_hash,
                created_at=event.created_at,
                actor=event.actor,
                action=event.action,
                request_id=event.request_id,
                details=event.details,
            )
            if recomputed != event.hash:
                return ChainReport(False, count, event.seq, "the event was altered")
            prev_hash, expected_seq, count, last_seq = (
                event.hash,
                event.seq + 1,
                count + 1,
                event.seq,
            )
    head = (await session.exec(select(AuditChainHead))).one_or_none()
    if head is not None and (head.seq != last_seq or head.hash != prev_hash):
        return ChainReport(False, count, last_seq + 1, "events after the last one were removed")
    return ChainReport(True, count)


async def events_for_request(session: AsyncSession, request_id: str) -> list[Any]:
    """The request's trail: linked events in chain order, then those not linked yet (their
    ``seq`` is None until the linker reaches them). One Core query (``UNION ALL`` of both
    tables), not two ORM loads: the staff detail view reads it on every call. Rows have
    ``seq``, ``created_at``, ``actor``, ``action`` and ``details``."""
    await append_pending(session)  # this unit of work's own events are part of the trail
    conn = await session.connection()
    result = await conn.execute(_trail_query(), {"request_id": request_id})
    return list(result.all())


def _trail_union() -> Any:
    """The request's linked events (``linked_later`` 0, by ``position`` = seq) and those
    waiting to be linked (1, by pending id): two index scans, one ``UNION ALL``."""
    global _TRAIL_UNION
    if _TRAIL_UNION is None:
        linked = sa_select(
            literal(0).label("linked_later"),
            EVENT_TABLE.c.seq,
            EVENT_TABLE.c.seq.label("position"),
            EVENT_TABLE.c.created_at,
            EVENT_TABLE.c.actor,
            EVENT_TABLE.c.action,
            EVENT_TABLE.c.details,
        ).where(EVENT_TABLE.c.request_id == bindparam("request_id"))
        waiting = sa_select(
            literal(1).label("linked_later"),
            null().label("seq"),
            PENDING_TABLE.c.id.label("position"),
            PENDING_TABLE.c.created_at,
            PENDING_TABLE.c.actor,
            PENDING_TABLE.c.action,
            PENDING_TABLE.c.details,
        ).where(PENDING_TABLE.c.request_id == bindparam("request_id"))
        _TRAIL_UNION = union_all(linked, waiting)
    return _TRAIL_UNION


def _trail_query() -> Any:
    global _TRAIL
    if _TRAIL is None:
        trail = _trail_union().subquery()
        _TRAIL = sa_select(
            trail.c.seq, trail.c.created_at, trail.c.actor, trail.c.action, trail.c.details
        ).order_by(trail.c.linked_later, trail.c.position)
    return _TRAIL


_TRAIL_UNION: Any = None
_TRAIL: Any = None


class TrailEvent(NamedTuple):
    """One event of a request's trail, as ``events_for_request`` returns them."""

    seq: int | None
    created_at: datetime
    actor: str
    action: str
    details: str


def trail_column() -> Any:
    """The trail of the request named by the statement's ``request_id`` parameter as one
    JSON column (``db.json_rows``): a statement that reads the request brings its trail
    along, instead of a second statement (which cost a quarter of the staff detail view's
    CPU). ``trail_from_column`` reads it."""
    global _TRAIL_COLUMN
    if _TRAIL_COLUMN is None:
        trail = _trail_union().subquery()
        names = constant_list(["seq", "created_at", "actor", "action", "details", "later", "pos"])
        columns = [trail.c.seq, trail.c.created_at, trail.c.actor, trail.c.action, trail.c.details]
        columns += [trail.c.linked_later, trail.c.position]
        pairs = [part for pair in zip(names, columns, strict=True) for part in pair]
        _TRAIL_COLUMN = sa_select(json_rows(*pairs)).select_from(trail).scalar_subquery()
    return _TRAIL_COLUMN


_TRAIL_COLUMN: Any = None


def trail_from_column(value: str | None) -> list[TrailEvent]:
    """``trail_column``'s value as ``events_for_request`` returns the trail: linked events by
    sequence number, then those waiting to be linked in the order they were recorded."""
    rows = json.loads(value) if value else []
    rows.sort(key=lambda row: (row["later"], row["pos"]))
    return [
        TrailEvent(
            row["seq"], _instant(row["created_at"]), row["actor"], row["action"], row["details"]
        )
        for row in rows
    ]


def _instant(text: str) -> datetime:
    """A stored instant as the database wrote it in JSON: ISO 8601 with an offset
    (PostgreSQL), or naive and in UTC (SQLite keeps no offset, see ``db.UtcDateTime``)."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def pending_count(session: AsyncSession) -> int:
    return (await session.exec(select(func.count()).select_from(AuditPending))).one()
