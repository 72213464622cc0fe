"""A run a re-run superseded: the jobs it had, kept as history.

A re-run moves the request's connector jobs here (one row per superseded run, the jobs as
staff saw them, as JSON) and deletes them from ``connector_job``, so that every reader of a
request's jobs (fan-out, settling, assembly, the staff view) sees the current run only,
without knowing that runs exist. The stored records those jobs fetched are deleted: the
history keeps outcomes and what was retained, never the data.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class RequestRun(SQLModel, table=True):
    __tablename__ = "request_run"
    __table_args__ = (UniqueConstraint("request_id", "run"),)

    id: str = Field(primary_key=True, max_length=40)
    request_id: str = Field(max_length=40, foreign_key="dsr_request.id", index=True)
    run: int  # 1 for the request's first run
    completed_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime()))
    superseded_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    superseded_by: str = Field(max_length=200)  # the staff actor who asked for the re-run
    reason: str | None = Field(default=None, max_length=2000)
    jobs: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of job views
