"""The request table. Identity values and free text are sealed (AES-GCM); the e-mail is
findable only through its keyed hash; the status token only through its digest."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column, Date, Index, Text
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


def _ts(*, nullable: bool = True) -> Column:
    return Column(UtcDateTime(), nullable=nullable)


class DsrRequest(SQLModel, table=True):
    __tablename__ = "dsr_request"
    __table_args__ = (
        Index("ix_dsr_request_status_due", "status", "due_at"),
        Index("ix_dsr_request_email_index", "email_index"),
    )

    id: str = Field(primary_key=True, max_length=40)
    type: str = Field(max_length=20)
    status: str = Field(max_length=30)
    channel: str = Field(default="web", max_length=20)
    jurisdiction: str = Field(max_length=20)
    language: str = Field(max_length=35)

    email_index: str = Field(max_length=64)
    subject_sealed: str = Field(sa_column=Column(Text, nullable=False))
    content_sealed: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    status_token_digest: str = Field(max_length=64)

    received_at: datetime = Field(sa_column=_ts(nullable=False))
    created_at: datetime = Field(sa_column=_ts(nullable=False))
    updated_at: datetime = Field(sa_column=_ts(nullable=False))

    original_due_date: date = Field(sa_column=Column(Date, nullable=False))
    due_date: date = Field(sa_column=Column(Date, nullable=False))
    due_at: datetime = Field(sa_column=_ts(nullable=False))
    extended: bool = False
    extension_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    extended_at: datetime | None = Field(default=None, sa_column=_ts())
    reminders_sent: str = Field(default="", max_length=100)

    # How identity is to be proved (email_code, document, staff) and how it was.
    verification_method: str = Field(max_length=20)
    verification_expires_at: datetime | None = Field(default=None, sa_column=_ts())
    identity_verified_at: datetime | None = Field(default=None, sa_column=_ts())
    identity_verified_by: str | None = Field(default=None, max_length=200)
    identity_method: str | None = Field(default=None, max_length=20)
    # Identity information awaited from the subject (suspends or restarts some regimes' clock).
    identity_wait_started_at: datetime | None = Field(default=None, sa_column=_ts())
    identity_wait_ended_at: datetime | None = Field(default=None, sa_column=_ts())

    rejection_reason: str | None = Field(default=None, max_length=40)
    rejection_detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    closed_at: datetime | None = Field(default=None, sa_column=_ts())


class IdempotencyRecord(SQLModel, table=True):
    """The first answer to a keyed ``POST /v1/requests``, sealed, kept 24 hours."""

    __tablename__ = "idempotency_record"

    key_digest: str = Field(primary_key=True, max_length=64)
    body_digest: str = Field(max_length=64)
    request_id: str = Field(max_length=40)
    response_sealed: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=_ts(nullable=False))
