"""Identity proofs in flight: the current e-mail code of a request, and an uploaded identity
document until staff decide (then the file and the row are deleted)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class VerificationCode(SQLModel, table=True):
    __tablename__ = "verification_code"

    request_id: str = Field(primary_key=True, max_length=40)
    digest: str = Field(max_length=64)
    expires_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    attempts_left: int
    burnt: bool = False
    sends_in_window: int = 1
    window_started_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


class IdentityDocument(SQLModel, table=True):
    __tablename__ = "identity_document"

    request_id: str = Field(primary_key=True, max_length=40)
    file_name: str = Field(max_length=80)
    content_type: str = Field(max_length=40)
    size_bytes: int
    uploaded_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
