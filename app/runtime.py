"""What a running process shares: settings, the clock, the session factory, one HTTP client
and the sealer. Built once by ``create_app`` or ``dsr worker``; handed to services and jobs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings, decode_key
from app.db import create_engine, read_session_factory, session_factory, session_scope
from app.kit.clock import Clock
from app.kit.crypto import Sealer


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    read_sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    sealer: Sealer
    extras: dict[str, Any] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One unit of work (commit at the end, roll back on error)."""
        async with session_scope(self.sessions) as session:
            yield session

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.engine.dispose()


def build_runtime(settings: Settings, *, clock: Clock | None = None) -> Runtime:
    pool = {}
    if not settings.database_url.startswith("sqlite"):
        pool = {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow}
    engine = create_engine(settings.database_url, **pool)
    return Runtime(
        settings=settings,
        clock=clock or Clock(),
        engine=engine,
        sessions=session_factory(engine),
        read_sessions=read_session_factory(engine),
        http=httpx.AsyncClient(
            timeout=httpx.Timeout(10.0),
            follow_redirects=False,
            # Connector calls run concurrently (per-connector limits apply on top).
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=128),
            trust_env=False,
        ),
        sealer=Sealer(decode_key(settings.encryption_key)),
    )
