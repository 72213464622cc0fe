"""The reference: the thinnest FastAPI endpoint that validates a body and inserts one row.

``POST /v1/requests`` validates the same bodies as the service (a pydantic model with an
``EmailStr``), inserts one row into a throwaway table with SQLAlchemy Core on the same async
driver as the service (asyncpg or aiosqlite; on PostgreSQL a pool of 32 connections per
process, no pre-ping; on SQLite the service's WAL settings) and answers 202 once the row is
committed. No sealing, no audit chain, no e-mail, no deadline, no ORM. Served by uvicorn with
the same worker count::

    BENCH_THIN_DATABASE_URL=postgresql://... uvicorn thin_app:create_app --factory \
        --app-dir bench --workers N
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, EmailStr
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, event, insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData()
thin_request = Table(
    "bench_thin_request",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("type", String(20), nullable=False),
    Column("email", String(254), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


class Subject(BaseModel):
    email: EmailStr
    name: str | None = None
    phone: str | None = None
    customer_id: str | None = None


class Body(BaseModel):
    type: Literal["access", "rectification", "erasure", "restriction", "portability", "objection"]
    subject: Subject
    details: str | None = None
    rectifications: list[dict[str, str]] | None = None
    objection: dict[str, Any] | None = None
    jurisdiction: str | None = None
    language: str | None = None


def _engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed.set(drivername="sqlite+aiosqlite"))

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            # the same durability settings as the service's SQLite
            cursor = conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    pool: dict[str, Any] = {"pool_size": 32, "max_overflow": 0}
    if os.environ.get("BENCH_THIN_POOL") == "service":
        # the service's pool settings (app/db.py), to measure what they cost
        pool = {"pool_size": 10, "max_overflow": 20, "pool_pre_ping": True}
    return create_async_engine(parsed.set(drivername="postgresql+asyncpg"), **pool)


def create_app() -> FastAPI:
    url = os.environ["BENCH_THIN_DATABASE_URL"]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = _engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all, checkfirst=True)
        app.state.engine = engine
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/requests", status_code=202)
    async def file_request(body: Body) -> dict[str, str]:
        row_id = uuid.uuid4().hex
        async with app.state.engine.begin() as conn:
            await conn.execute(
                insert(thin_request).values(
                    id=row_id,
                    type=body.type,
                    email=str(body.subject.email),
                    body=json.dumps(body.model_dump(mode="json")),
                    created_at=datetime.now(UTC),
                )
            )
        return {"id": row_id, "status": "received"}

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app
