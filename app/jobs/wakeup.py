"""Waking workers the moment work is queued, instead of at their next poll.

In the process that queued the job, local workers are woken after the commit. Across
processes and hosts on PostgreSQL, the enqueuing transaction sends ``NOTIFY dsr_jobs``
(delivered only if it commits) and each worker listens on a connection of its own. The poll
(``DSR_WORKER_POLL_SECONDS``) stays as the safety net: a missed notification costs at most
one poll interval, never a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import after_commit, before_commit

log = logging.getLogger("dsr.jobs")

CHANNEL = "dsr_jobs"
_local: set[asyncio.Event] = set()


def wake_local() -> None:
    for event in list(_local):
        event.set()


async def _notify(session: AsyncSession) -> None:
    await session.exec(text(f"NOTIFY {CHANNEL}"))  # type: ignore[call-overload]


def on_enqueue(session: AsyncSession) -> None:
    """Called for every enqueue: wake workers once the unit of work commits."""
    after_commit(session, "jobs.wake", wake_local)
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        before_commit(session, "jobs.notify", _notify)


@contextlib.asynccontextmanager
async def subscribed(engine: AsyncEngine, event: asyncio.Event) -> AsyncIterator[None]:
    """Set ``event`` whenever work may be waiting: local enqueues always; on PostgreSQL also
    notifications from other processes (best effort: without them, polling still works)."""
    _local.add(event)
    listener: Any = None
    try:
        if engine.dialect.name == "postgresql":
            listener = await _listen(engine, event)
        yield
    finally:
        _local.discard(event)
        if listener is not None:
            with contextlib.suppress(Exception):
                # Closed for good, not pooled: the listener must not outlive the worker.
                await listener.invalidate()
                await listener.close()


async def _listen(engine: AsyncEngine, event: asyncio.Event) -> Any:
    try:
        connection = await engine.connect()
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.add_listener(CHANNEL, lambda *_: event.set())
    except Exception:
        log.warning("jobs.listen_failed: polling only")
        return None
    return connection
