"""The e-mail outbox: messages written in the same transaction as the state change that
causes them, sealed at rest, delivered by the worker, their content dropped once sent."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class OutboxStatus(StrEnum):
    pending = "pending"  # waiting for (another) delivery attempt
    sent = "sent"  # handed to the SMTP server or written as .eml; content dropped
    failed = "failed"  # delivery attempts exhausted; kept for staff to see


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox_message"

    id: str = Field(primary_key=True, max_length=40)
    request_id: str | None = Field(default=None, index=True, max_length=40)
    template: str = Field(max_length=40)
    language: str = Field(max_length=8)
    status: str = Field(default=OutboxStatus.pending, max_length=12)
    sealed: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime(), nullable=True))
