"""Append-only, hash-chained audit events.

Each event carries the hash of the one before it; the hash covers the event's sequence
number, time, actor, action, request id and details, so editing, deleting or reordering any
stored event breaks verification at that event. Appending locks the one-row chain head
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's writer lock does the same job), so chains
stay linear under concurrent writers. Details must never hold identity values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit.models import AuditChainHead, AuditEvent
from app.db import before_commit
from app.kit.clock import rfc3339

GENESIS = "0" * 64
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
    """Add one event to the chain, in the caller's unit of work. Events are linked and
    written just before the unit of work commits (``append_pending``), so the chain head is
    locked only for the last statements of the transaction."""
    body = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    session.info.setdefault(PENDING, []).append(
        {
            "request_id": request_id,
            "actor": actor,
            "action": action,
            "details": body,
            "created_at": now,
        }
    )
    before_commit(session, "audit", append_pending)


async def append_pending(session: AsyncSession) -> None:
    """Link the unit of work's pending events to the chain and write them."""
    pending: list[dict[str, Any]] = session.info.pop(PENDING, [])
    if not pending:
        return
    await session.flush()  # the rest of the work first: the head lock is taken last
    conn = await session.connection()
    postgres = conn.dialect.name == "postgresql"
    lock = " FOR UPDATE" if postgres else ""
    head = (
        await conn.execute(text(f"SELECT seq, hash FROM audit_chain_head WHERE id = 1{lock}"))
    ).one_or_none()
    seq, prev = (head[0], head[1]) if head is not None else (0, GENESIS)
    rows = []
    for event in pending:
        seq += 1
        digest = event_hash(seq=seq, prev_hash=prev, **event)
        rows.append({**event, "seq": seq, "prev_hash": prev, "hash": digest})
        prev = digest
    if head is None:
        await conn.execute(
            text("INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, :hash)"),
            {"hash": GENESIS},
        )
    events = AuditEvent.__table__  # type: ignore[attr-defined]
    heads = AuditChainHead.__table__  # type: ignore[attr-defined]
    move_head = update(heads).where(heads.c.id == HEAD_ID).values(seq=seq, hash=prev)
    if postgres:
        # One round trip while the head is locked: WITH ins AS (INSERT ...) UPDATE head.
        await conn.execute(move_head.add_cte(insert(events).values(rows).cte("ins")))
    else:
        await conn.execute(insert(events), rows)
        await conn.execute(move_head)


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


async def events_for_request(session: AsyncSession, request_id: str) -> list[AuditEvent]:
    await append_pending(session)  # this unit of work's own events are part of the trail
    rows = await session.exec(
        select(AuditEvent).where(AuditEvent.request_id == request_id).order_by(col(AuditEvent.seq))
    )
    return list(rows.all())
