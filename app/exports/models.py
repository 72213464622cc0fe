"""An answer package: where it is, what it weighs, its checksum, until when it is kept."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class PackageStatus(StrEnum):
    ready = "ready"
    expired = "expired"  # deleted after DSR_EXPORT_TTL_DAYS; the download answers 410
    rebuilding = "rebuilding"  # staff asked for a fresh package; the assembly is queued


def _ts(*, nullable: bool) -> Column:
    return Column(UtcDateTime(), nullable=nullable)


class ExportPackage(SQLModel, table=True):
    __tablename__ = "export_package"

    id: str = Field(primary_key=True, max_length=40)
    request_id: str = Field(max_length=40, foreign_key="dsr_request.id", unique=True)
    status: str = Field(default=PackageStatus.ready, max_length=20)
    file_name: str = Field(max_length=200)
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))  # may pass 2 GiB
    sha256: str = Field(max_length=64)
    language: str = Field(max_length=10)
    downloads: int = 0
    created_at: datetime = Field(sa_column=_ts(nullable=False))
    expires_at: datetime = Field(sa_column=_ts(nullable=False))
    deleted_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    # When the connector results it came from were deleted: from then on it cannot be
    # rebuilt, only the request re-run (DSR_EXPORT_RESULTS_GRACE_DAYS after expiry).
    results_deleted_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
