"""The audit chain's tables: append-only events and the chain head."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Integer, Text
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"

    seq: int = Field(primary_key=True)
    request_id: str | None = Field(default=None, index=True, max_length=40)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=80)
    details: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditPending(SQLModel, table=True):
    """Events written by units of work, waiting to be linked into the chain. Writing here
    takes no lock, so no transaction waits on another to record what it did; the linker
    (``audit.link``, every second, and before every verification) moves them into
    ``audit_event`` in order, under the head's lock, hundreds at a time."""

    __tablename__ = "audit_pending"

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    request_id: str | None = Field(default=None, index=True, max_length=40)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=80)
    details: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


class AuditChainHead(SQLModel, table=True):
    """One row: the last event's sequence number and hash. Appenders lock it, which orders
    the chain without a table-wide lock."""

    __tablename__ = "audit_chain_head"

    id: int = Field(primary_key=True)
    seq: int
    hash: str = Field(max_length=64)
