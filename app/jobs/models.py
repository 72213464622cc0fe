"""The jobs table, after procrastinate's design: status, kind, payload, run_after, attempts,
lease owner and expiry, last error, and a queueing lock unique among queued jobs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, Index, Text, text
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class JobStatus(StrEnum):
    queued = "queued"  # waiting for run_after, or for a free worker
    running = "running"  # claimed by a worker that holds the lease
    succeeded = "succeeded"  # done for good
    failed = "failed"  # gave up: permanent error or attempts exhausted


def _ts(*, nullable: bool) -> Column:
    return Column(UtcDateTime(), nullable=nullable)


class Job(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_due", "status", "run_after"),
        Index(
            "uq_job_queueing_lock",
            "queueing_lock",
            unique=True,
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(max_length=80)
    status: str = Field(default=JobStatus.queued, max_length=20)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    queueing_lock: str | None = Field(default=None, max_length=200)
    request_id: str | None = Field(default=None, index=True, max_length=40)
    run_after: datetime = Field(sa_column=_ts(nullable=False))
    attempts: int = 0
    max_attempts: int = 10
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_expires_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_error: str | None = Field(default=None, max_length=1000)
    created_at: datetime = Field(sa_column=_ts(nullable=False))
    updated_at: datetime = Field(sa_column=_ts(nullable=False))
