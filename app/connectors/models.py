"""The connector registry and the per-connector work of a request.

A ``ConnectorJob`` is what the contract calls a job: one per request and connector, with the
status staff see (``queued | running | waiting_callback | waiting_for_staff | succeeded |
failed``), the outcome and what was retained. The engine's ``Job`` rows that carry out its
HTTP calls are plumbing: ``engine_job_id`` points at the latest one.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class ConnectorMode(StrEnum):
    webhook = "webhook"  # called over HTTP with signed JSON
    manual = "manual"  # a task for staff, tracked the same way


class ConnectorJobStatus(StrEnum):
    queued = "queued"
    running = "running"
    waiting_callback = "waiting_callback"  # answered 202: the result comes by callback
    waiting_for_staff = "waiting_for_staff"  # a manual connector's task
    succeeded = "succeeded"
    failed = "failed"  # for good: staff can retry it


FINISHED = frozenset({ConnectorJobStatus.succeeded, ConnectorJobStatus.failed})


def _ts(*, nullable: bool) -> Column:
    return Column(UtcDateTime(), nullable=nullable)


def _text(*, nullable: bool = False) -> Column:
    return Column(Text, nullable=nullable)


class Connector(SQLModel, table=True):
    __tablename__ = "connector"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=100, index=True)
    url: str | None = Field(default=None, max_length=2000)
    mode: str = Field(default=ConnectorMode.webhook, max_length=20)
    enabled: bool = True
    # JSON lists and objects: registry metadata, no personal data.
    request_types: str = Field(sa_column=_text())
    identity_types: str = Field(sa_column=_text())
    categories: str = Field(sa_column=_text())
    # The categories the person provided (Art. 20): a portability package holds only these.
    # NULL: the connector does not say, and every category goes in.
    provided_categories: str | None = Field(default=None, sa_column=_text(nullable=True))
    processing: str = Field(sa_column=_text())
    timeout_s: float = 10
    max_attempts: int = 8
    max_concurrency: int = 16
    callback_timeout_s: float | None = None
    secret_sealed: str = Field(sa_column=_text())
    previous_secret_sealed: str | None = Field(default=None, sa_column=_text(nullable=True))
    previous_secret_until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    created_at: datetime = Field(sa_column=_ts(nullable=False))
    updated_at: datetime = Field(sa_column=_ts(nullable=False))
    deleted_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class ConnectorJob(SQLModel, table=True):
    __tablename__ = "connector_job"
    __table_args__ = (
        UniqueConstraint("request_id", "connector_id"),
        Index("ix_connector_job_status", "status", "updated_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    # Indexed first by the unique constraint on (request_id, connector_id).
    request_id: str = Field(max_length=40, foreign_key="dsr_request.id")
    connector_id: str = Field(max_length=40, foreign_key="connector.id", index=True)
    status: str = Field(default=ConnectorJobStatus.queued, max_length=20)
    attempts: int = 0  # calls made since the job was (re)queued
    engine_job_id: str | None = Field(default=None, max_length=40)
    last_error: str | None = Field(default=None, max_length=1000)
    outcome: str | None = Field(default=None, max_length=40)
    retained: str | None = Field(default=None, sa_column=_text(nullable=True))  # JSON list
    # JSON list of stored data files: [{"file", "format", "bytes", "source"}]
    data_files: str | None = Field(default=None, sa_column=_text(nullable=True))
    message_sealed: str | None = Field(default=None, sa_column=_text(nullable=True))
    result_webhook_id: str | None = Field(default=None, max_length=200)
    finished_by: str | None = Field(default=None, max_length=200)  # connector or staff actor
    callback_deadline: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    created_at: datetime = Field(sa_column=_ts(nullable=False))
    updated_at: datetime = Field(sa_column=_ts(nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class CallbackReceipt(SQLModel, table=True):
    """Each ``webhook-id`` a connector used, so a replayed callback is never applied twice."""

    __tablename__ = "callback_receipt"

    connector_id: str = Field(primary_key=True, max_length=40)
    webhook_id: str = Field(primary_key=True, max_length=200)
    job_id: str = Field(max_length=40)
    kind: str = Field(max_length=20)  # result | upload
    received_at: datetime = Field(sa_column=_ts(nullable=False))
    answer: str = Field(sa_column=_text())  # the first answer, given again to a repeat
