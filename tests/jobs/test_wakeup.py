"""An idle worker starts new work at once, not at its next poll: woken after the commit in
the process that queued it, and through LISTEN/NOTIFY from any other process on PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlmodel import col, select

from app.jobs import wakeup
from app.jobs.models import Job, JobStatus
from app.jobs.worker import Worker
from app.runtime import build_runtime
from tests.conftest import Service

SLOW_POLL = {"worker_poll_seconds": 5}


async def _delivered(service: Service) -> bool:
    async with service.runtime.read_sessions() as session:
        rows = await session.exec(
            select(Job.id).where(
                col(Job.kind) == "notifications.deliver", col(Job.status) == JobStatus.succeeded
            )
        )
        return rows.first() is not None


async def _time_to_first_job(service: Service, worker: Worker) -> float:
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(0.5)  # idle: waiting out its five-second poll
        started = time.monotonic()
        await service.file()  # queues the verification e-mail
        while not await _delivered(service):
            assert time.monotonic() - started < 4, "the worker waited for its poll"
            await asyncio.sleep(0.02)
        return time.monotonic() - started
    finally:
        stop.set()
        await running


@pytest.mark.parametrize("settings_overrides", [SLOW_POLL])
async def test_a_worker_in_the_same_process_is_woken_by_the_commit(service: Service) -> None:
    worker = Worker(service.runtime, concurrency=2)
    assert await _time_to_first_job(service, worker) < 2


@pytest.mark.parametrize("settings_overrides", [SLOW_POLL])
async def test_a_worker_elsewhere_is_woken_by_notify(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not service.settings.database_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite runs one process")
    # Another process's worker: its own engine, and no in-process wake-up to lean on.
    monkeypatch.setattr(wakeup, "wake_local", lambda: None)
    elsewhere = build_runtime(service.settings, clock=service.clock)
    try:
        assert await _time_to_first_job(service, Worker(elsewhere, concurrency=2)) < 2
    finally:
        await elsewhere.aclose()
