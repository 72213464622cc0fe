"""What a running process shares: settings, the clock, the session factory, one HTTP client
and the sealer. Built once by ``create_app`` or ``dsr worker``; handed to services and jobs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import configure_mappers
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings, decode_key
from app.db import create_engine, read_session_factory, session_factory, session_scope
from app.kit.clock import Clock
from app.kit.crypto import Sealer
from app.kit.http import shared_client
from app.kit.smtp import SmtpConnections
from app.models import import_all_models


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    read_sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    sealer: Sealer
    # SMTP connections kept open between the worker's deliveries (``app.kit.smtp``).
    smtp: SmtpConnections = field(default_factory=SmtpConnections)
    extras: dict[str, Any] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One unit of work (commit at the end, roll back on error)."""
        async with session_scope(self.sessions) as session:
            yield session

    async def aclose(self) -> None:
        await self.smtp.aclose()
        await self.http.aclose()
        await self.engine.dispose()


# Connections a worker uses beside its jobs: the claim, the heartbeat and a batch's commit
# (the LISTEN connection is its own, outside the pool).
WORKER_OWN_CONNECTIONS = 3


def build_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    role: str = "dsr",
    worker_concurrency: int = 0,
) -> Runtime:
    """``role`` names the process to the database (PostgreSQL's ``application_name``), so
    ``pg_stat_activity`` shows which process holds which connection.

    A process that runs a worker of ``worker_concurrency`` jobs gets that many pooled
    connections more (plus the worker's own): every job may hold one at once, and a pool
    smaller than its busiest moment closes each overflow connection when it is returned and
    opens a new one for the next job, which costs PostgreSQL a backend and the worker a
    handshake per job. Connections are opened on demand, so an idle worker holds few."""
    # Every mapped class configured up front: the engine turns claimed rows into ``Job``s
    # with ``model_construct``, which needs configured attributes (an ORM query or a model's
    # constructor would configure them, but a worker's first claim may come before either).
    import_all_models()
    configure_mappers()
    options: dict[str, Any] = {}
    if not settings.database_url.startswith("sqlite"):
        worker_share = worker_concurrency + WORKER_OWN_CONNECTIONS if worker_concurrency else 0
        options = {
            "pool_size": settings.db_pool_size + worker_share,
            "max_overflow": settings.db_max_overflow,
            "connect_args": {"server_settings": {"application_name": role}},
        }
    engine = create_engine(settings.database_url, **options)
    return Runtime(
        settings=settings,
        clock=clock or Clock(),
        engine=engine,
        sessions=session_factory(engine),
        read_sessions=read_session_factory(engine),
        # Connector calls run concurrently (per-connector limits apply on top).
        http=shared_client(timeout=10.0, max_connections=256),
        sealer=Sealer(decode_key(settings.encryption_key)),
    )
