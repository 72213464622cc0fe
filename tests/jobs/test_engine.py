"""The job engine against real SQLite and PostgreSQL: enqueue, claim under a lease, finish,
retry, release, the worker loop and its graceful shutdown, and concurrent claimers."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from app.config import Settings
from app.jobs import registry, retry
from app.jobs import service as jobs
from app.jobs import worker as worker_module
from app.jobs.models import Job, JobStatus
from app.jobs.registry import HANDLERS, PERIODIC, JobError
from app.jobs.worker import JobContext, Worker, payload_of
from app.kit.clock import FrozenClock, utc
from app.runtime import Runtime, build_runtime

KIND = "test-engine.work"
Handler = Callable[[JobContext, Job], Awaitable[None]]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"worker_poll_seconds": 0.05, "retry_base_seconds": 2, "retry_cap_seconds": 600}


@pytest.fixture
async def runtime(settings: Settings, clock: FrozenClock) -> AsyncIterator[Runtime]:
    rt = build_runtime(settings, clock=clock)
    try:
        yield rt
    finally:
        await rt.aclose()


@pytest.fixture
def register() -> Iterator[Callable[..., None]]:
    """Register test-only handlers (and periodic ticks); the domains' periodic ticks are set
    aside meanwhile so a running worker only sees ours. Everything is restored afterwards."""
    saved_handlers, saved_periodic = dict(HANDLERS), dict(PERIODIC)
    PERIODIC.clear()

    def add(kind: str, func: Handler, *, every_seconds: float | None = None) -> None:
        assert kind.startswith("test-engine."), "test kinds only"
        if every_seconds is None:
            registry.handler(kind)(func)
        else:
            registry.periodic(kind, every_seconds=every_seconds)(func)

    try:
        yield add
    finally:
        HANDLERS.clear()
        HANDLERS.update(saved_handlers)
        PERIODIC.clear()
        PERIODIC.update(saved_periodic)


@pytest.fixture
def half_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's retry decisions with the random factor fixed at 0.5."""
    monkeypatch.setattr(worker_module, "decide", functools.partial(retry.decide, rand=lambda: 0.5))


# --- helpers ----------------------------------------------------------------------------------


async def add(rt: Runtime, kind: str = KIND, payload: dict[str, Any] | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    async with rt.session() as session:
        return await jobs.enqueue(session, kind, payload or {}, now=rt.clock.now(), **kw)


async def add_many(rt: Runtime, count: int, kind: str = KIND) -> list[str]:
    async with rt.session() as session:
        created = [
            await jobs.enqueue(session, kind, {"n": n}, now=rt.clock.now()) for n in range(count)
        ]
    return [job.id for job in created if job is not None]


async def row(rt: Runtime, job_id: str) -> Job:
    async with rt.session() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


async def rows(rt: Runtime, kind: str = KIND) -> list[Job]:
    async with rt.session() as session:
        return list((await session.exec(select(Job).where(col(Job.kind) == kind))).all())


async def claim(
    rt: Runtime, worker_id: str, *, limit: int = 10, lease_seconds: float = 60
) -> list[Job]:
    async with rt.session() as session:
        return await jobs.claim_due_jobs(
            session,
            worker_id=worker_id,
            now=rt.clock.now(),
            limit=limit,
            lease_seconds=lease_seconds,
        )


async def finish(
    rt: Runtime, what: Callable[..., Awaitable[bool]], job: Job, worker_id: str, **kw: Any
) -> bool:
    async with rt.session() as session:
        return await what(session, job, worker_id=worker_id, now=rt.clock.now(), **kw)


async def wait_until(predicate: Callable[[], Awaitable[bool]], *, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def all_succeeded(rt: Runtime) -> bool:
    return all(j.status == JobStatus.succeeded for j in await rows(rt))


def at(value: datetime | None) -> datetime:
    assert value is not None
    return utc(value)


# --- enqueue, claim, finish -------------------------------------------------------------------


async def test_enqueued_job_is_claimed_under_a_lease_and_succeeds(runtime: Runtime) -> None:
    now = runtime.clock.now()
    job = await add(runtime, payload={"connector": "crm"}, request_id="req_1")
    assert job is not None

    [claimed] = await claim(runtime, "w1", lease_seconds=60)
    assert claimed.id == job.id
    assert payload_of(claimed) == {"connector": "crm"}
    stored = await row(runtime, job.id)
    assert stored.status == JobStatus.running
    assert stored.attempts == 1
    assert stored.lease_owner == "w1"
    assert at(stored.lease_expires_at) == now + timedelta(seconds=60)
    assert await claim(runtime, "w2") == []  # held under a live lease

    assert await finish(runtime, jobs.mark_succeeded, claimed, "w1") is True
    stored = await row(runtime, job.id)
    assert (stored.status, stored.lease_owner, stored.lease_expires_at) == (
        JobStatus.succeeded,
        None,
        None,
    )
    assert await claim(runtime, "w2") == []
    async with runtime.session() as session:
        assert await jobs.counts_by_status(session) == {"succeeded": 1}


async def test_enqueue_joins_the_callers_transaction(runtime: Runtime) -> None:
    class Boom(Exception):
        pass

    async def state_change_that_fails() -> None:
        async with runtime.session() as session:
            await jobs.enqueue(session, KIND, {}, now=runtime.clock.now())
            raise Boom

    with pytest.raises(Boom):
        await state_change_that_fails()
    assert await rows(runtime) == []


async def test_a_job_is_not_claimed_before_run_after(runtime: Runtime, clock: FrozenClock) -> None:
    later = await add(runtime, run_after=clock.now() + timedelta(seconds=60))
    assert later is not None
    assert await claim(runtime, "w1") == []
    clock.advance(seconds=59)
    assert await claim(runtime, "w1") == []
    clock.advance(seconds=1)
    assert [j.id for j in await claim(runtime, "w1")] == [later.id]


async def test_due_jobs_are_claimed_oldest_first_up_to_the_limit(
    runtime: Runtime, clock: FrozenClock
) -> None:
    newer = await add(runtime, run_after=clock.now())
    older = await add(runtime, run_after=clock.now() - timedelta(minutes=5))
    assert newer is not None
    assert older is not None
    assert [j.id for j in await claim(runtime, "w1", limit=1)] == [older.id]
    assert [j.id for j in await claim(runtime, "w1", limit=1)] == [newer.id]


async def test_queueing_lock_dedupes_queued_jobs_only(runtime: Runtime) -> None:
    first = await add(runtime, queueing_lock="fan_out:req_1")
    assert first is not None
    assert await add(runtime, queueing_lock="fan_out:req_1") is None
    other = await add(runtime, queueing_lock="fan_out:req_2")
    assert other is not None
    assert len(await rows(runtime)) == 2

    await claim(runtime, "w1", limit=1)  # the first is running now: the lock is free again
    second = await add(runtime, queueing_lock="fan_out:req_1")
    assert second is not None
    assert await add(runtime, queueing_lock="fan_out:req_1") is None
    assert sorted(j.status for j in await rows(runtime)) == ["queued", "queued", "running"]


async def test_retrying_a_job_whose_lock_is_taken_by_a_queued_copy_loses_nothing(
    runtime: Runtime,
) -> None:
    first = await add(runtime, queueing_lock="fan_out:req_1")
    [claimed] = await claim(runtime, "w1")
    copy = await add(runtime, queueing_lock="fan_out:req_1")
    assert first is not None
    assert copy is not None

    ok = await finish(runtime, jobs.reschedule, claimed, "w1", delay_seconds=0, error="Timeout")
    assert ok is True
    assert {j.id: j.status for j in await rows(runtime)} == {
        first.id: JobStatus.queued,
        copy.id: JobStatus.queued,
    }


async def test_releasing_a_job_whose_lock_is_taken_by_a_queued_copy_loses_nothing(
    runtime: Runtime,
) -> None:
    first = await add(runtime, queueing_lock="periodic:x")
    [claimed] = await claim(runtime, "w1")
    copy = await add(runtime, queueing_lock="periodic:x")
    assert first is not None
    assert copy is not None

    assert await finish(runtime, jobs.release, claimed, "w1") is True
    released = await row(runtime, first.id)
    assert (released.status, released.attempts) == (JobStatus.queued, 0)


# --- leases -------------------------------------------------------------------------------------


async def test_expired_lease_is_claimed_again_and_the_old_owner_is_refused(
    runtime: Runtime, clock: FrozenClock
) -> None:
    job = await add(runtime)
    assert job is not None
    [first] = await claim(runtime, "w1", lease_seconds=60)
    clock.advance(seconds=30)
    assert await claim(runtime, "w2") == []  # w1 is still alive

    clock.advance(seconds=31)  # w1 died: its lease ran out
    [second] = await claim(runtime, "w2", lease_seconds=60)
    assert second.id == job.id
    assert second.attempts == 2
    assert (await row(runtime, job.id)).lease_owner == "w2"

    # w1 wakes up late: none of its writes may land on w2's job
    assert await finish(runtime, jobs.mark_succeeded, first, "w1") is False
    assert await finish(runtime, jobs.mark_failed, first, "w1", error="late") is False
    assert (
        await finish(runtime, jobs.reschedule, first, "w1", delay_seconds=5, error="late") is False
    )
    assert await finish(runtime, jobs.release, first, "w1") is False
    stored = await row(runtime, job.id)
    assert (stored.status, stored.lease_owner, stored.attempts) == (JobStatus.running, "w2", 2)

    assert await finish(runtime, jobs.mark_succeeded, second, "w2") is True
    assert (await row(runtime, job.id)).status == JobStatus.succeeded


async def test_extending_a_lease_keeps_other_workers_away(
    runtime: Runtime, clock: FrozenClock
) -> None:
    job = await add(runtime)
    assert job is not None
    await claim(runtime, "w1", lease_seconds=60)
    clock.advance(seconds=50)
    async with runtime.session() as session:
        await jobs.extend_leases(  # another worker's heartbeat does nothing to w1's lease
            session, worker_id="w2", job_ids=[job.id], now=clock.now(), lease_seconds=3600
        )
        await jobs.extend_leases(
            session, worker_id="w1", job_ids=[job.id], now=clock.now(), lease_seconds=60
        )
    assert at((await row(runtime, job.id)).lease_expires_at) == clock.now() + timedelta(seconds=60)
    clock.advance(seconds=20)  # 70 s after the claim, 20 s after the heartbeat
    assert await claim(runtime, "w2") == []
    clock.advance(seconds=41)
    assert [j.id for j in await claim(runtime, "w2")] == [job.id]


async def test_release_gives_the_job_back_without_counting_the_attempt(
    runtime: Runtime, clock: FrozenClock
) -> None:
    job = await add(runtime)
    assert job is not None
    [claimed] = await claim(runtime, "w1")
    assert await finish(runtime, jobs.release, claimed, "intruder") is False
    clock.advance(seconds=5)
    assert await finish(runtime, jobs.release, claimed, "w1") is True
    stored = await row(runtime, job.id)
    assert (stored.status, stored.attempts, stored.lease_owner) == (JobStatus.queued, 0, None)
    assert at(stored.run_after) <= clock.now()
    [again] = await claim(runtime, "w2")
    assert (again.id, again.attempts) == (job.id, 1)


# --- the worker: handlers, failures, retries ------------------------------------------------------


async def test_worker_runs_the_registered_handler(
    runtime: Runtime, register: Callable[..., None]
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def handle(ctx: JobContext, job: Job) -> None:
        assert ctx is runtime
        seen.append((job.id, payload_of(job)))

    register(KIND, handle)
    job = await add(runtime, payload={"n": 1})
    assert job is not None
    assert await Worker(runtime).drain() == 1
    assert seen == [(job.id, {"n": 1})]
    stored = await row(runtime, job.id)
    assert (stored.status, stored.attempts, stored.last_error) == (JobStatus.succeeded, 1, None)


async def test_permanent_job_error_fails_the_job_at_once(
    runtime: Runtime, register: Callable[..., None]
) -> None:
    async def handle(ctx: JobContext, job: Job) -> None:
        raise JobError("connector answered 410 Gone", permanent=True)

    register(KIND, handle)
    job = await add(runtime, max_attempts=10)
    assert job is not None
    assert await Worker(runtime).drain() == 1
    stored = await row(runtime, job.id)
    assert (stored.status, stored.attempts) == (JobStatus.failed, 1)
    assert stored.last_error == "connector answered 410 Gone"
    assert stored.lease_owner is None


async def test_unknown_kind_fails_permanently(runtime: Runtime) -> None:
    job = await add(runtime, kind="test-engine.nobody-handles-this")
    assert job is not None
    await Worker(runtime).drain()
    stored = await row(runtime, job.id)
    assert stored.status == JobStatus.failed
    assert "no handler" in (stored.last_error or "")


@pytest.mark.usefixtures("half_jitter")
async def test_crashing_handler_is_retried_with_backoff_then_fails(
    runtime: Runtime, clock: FrozenClock, register: Callable[..., None]
) -> None:
    calls: list[int] = []

    async def handle(ctx: JobContext, job: Job) -> None:
        calls.append(job.attempts)
        raise RuntimeError("cannot reach ana@example.org's account")

    register(KIND, handle)
    job = await add(runtime, max_attempts=3)
    assert job is not None
    worker = Worker(runtime)

    assert await worker.drain() == 1
    stored = await row(runtime, job.id)
    assert (stored.status, stored.attempts) == (JobStatus.queued, 1)
    assert stored.last_error == "RuntimeError"  # the class, never the message (personal data)
    assert at(stored.run_after) == clock.now() + timedelta(seconds=1)  # 0.5 * 2 * 2^0
    assert stored.lease_owner is None
    assert await worker.drain() == 0  # not due yet

    clock.advance(seconds=1)
    assert await worker.drain() == 1
    stored = await row(runtime, job.id)
    assert (stored.status, stored.attempts) == (JobStatus.queued, 2)
    assert at(stored.run_after) == clock.now() + timedelta(seconds=2)  # 0.5 * 2 * 2^1

    clock.advance(seconds=2)
    assert await worker.drain() == 1
    stored = await row(runtime, job.id)
    assert (stored.status, stored.attempts) == (JobStatus.failed, 3)
    assert stored.last_error == "RuntimeError"
    assert calls == [1, 2, 3]
    clock.advance(hours=1)
    assert await worker.drain() == 0


async def test_worker_survives_a_retry_while_a_copy_holds_the_queueing_lock(
    runtime: Runtime, clock: FrozenClock, register: Callable[..., None]
) -> None:
    runs: list[str] = []

    async def handle(ctx: JobContext, job: Job) -> None:
        runs.append(job.id)
        if len(runs) == 1:  # meanwhile, the same work is queued again (another API replica)
            await add(ctx, queueing_lock="fan_out:req_1")
            raise RuntimeError("connector timed out")

    register(KIND, handle)
    first = await add(runtime, queueing_lock="fan_out:req_1")
    assert first is not None
    worker = Worker(runtime)
    await worker.drain()
    clock.advance(minutes=10)
    await worker.drain()
    statuses = {j.id: j.status for j in await rows(runtime)}
    assert set(statuses.values()) == {JobStatus.succeeded}
    assert first.id in runs
    assert len(statuses) == 2


async def test_retry_after_is_honoured(
    runtime: Runtime, clock: FrozenClock, register: Callable[..., None]
) -> None:
    async def handle(ctx: JobContext, job: Job) -> None:
        raise JobError("429 Too Many Requests", retry_after=30)

    register(KIND, handle)
    job = await add(runtime)
    assert job is not None
    await Worker(runtime).drain()
    stored = await row(runtime, job.id)
    assert stored.status == JobStatus.queued
    assert stored.last_error == "429 Too Many Requests"
    run_after = at(stored.run_after)
    assert clock.now() + timedelta(seconds=30) <= run_after <= clock.now() + timedelta(minutes=10)
    clock.advance(seconds=29)
    assert await claim(runtime, "w1") == []


async def test_periodic_ticks_are_queued_once_across_workers(
    runtime: Runtime, register: Callable[..., None]
) -> None:
    ticks: list[str] = []

    async def tick(ctx: JobContext, job: Job) -> None:
        ticks.append(job.id)

    register("test-engine.tick", tick, every_seconds=60)
    first, second = Worker(runtime), Worker(runtime)
    await first.enqueue_periodic()
    await second.enqueue_periodic()
    await first.enqueue_periodic()  # not due again within the minute
    assert len(await rows(runtime, "test-engine.tick")) == 1
    await first.drain()
    await second.drain()
    assert len(ticks) == 1


# --- the worker loop ------------------------------------------------------------------------------


async def test_running_worker_picks_up_new_jobs_and_stops_on_request(
    runtime: Runtime, register: Callable[..., None]
) -> None:
    ran: list[str] = []

    async def handle(ctx: JobContext, job: Job) -> None:
        await asyncio.sleep(0.01)
        ran.append(job.id)

    register(KIND, handle)
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(runtime, concurrency=4).run(stop, grace_seconds=2))
    try:
        await asyncio.sleep(0.1)  # idle, polling
        ids = await add_many(runtime, 10)

        await wait_until(functools.partial(all_succeeded, runtime))
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert sorted(ran) == sorted(ids)


async def test_jobs_queued_one_at_a_time_are_claimed_together(
    runtime: Runtime, register: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream of single jobs (each intake queues its e-mail) is taken in a few claims, not
    one claim per job: after a claim that emptied the queue, the worker gathers a moment.
    (Without it, each of these jobs woke the worker and was claimed alone.)"""
    claims: list[int] = []
    claim_due_jobs = jobs.claim_due_jobs

    async def counted(*args: Any, **kwargs: Any) -> list[Job]:
        claimed = await claim_due_jobs(*args, **kwargs)
        if claimed:
            claims.append(len(claimed))
        return claimed

    async def handle(ctx: JobContext, job: Job) -> None:
        return None

    monkeypatch.setattr(jobs, "claim_due_jobs", counted)
    register(KIND, handle)
    stop = asyncio.Event()
    # A long gather, so that a slow machine still queues all twelve within one or two.
    task = asyncio.create_task(Worker(runtime, concurrency=32, gather_seconds=1.0).run(stop))
    try:
        await asyncio.sleep(0.1)  # idle: its first claim found nothing
        for _ in range(12):
            await add(runtime)
            await asyncio.sleep(0.005)

        await wait_until(functools.partial(all_succeeded, runtime))
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert sum(claims) == 12
    assert len(claims) <= 2, claims


async def test_shutdown_waits_for_an_in_flight_job_within_the_grace_period(
    runtime: Runtime, register: Callable[..., None]
) -> None:
    started = asyncio.Event()

    async def handle(ctx: JobContext, job: Job) -> None:
        started.set()
        await asyncio.sleep(0.3)

    register(KIND, handle)
    job = await add(runtime)
    assert job is not None
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(runtime).run(stop, grace_seconds=5))
    await asyncio.wait_for(started.wait(), timeout=5)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert (await row(runtime, job.id)).status == JobStatus.succeeded


async def test_shutdown_releases_a_slow_job_after_the_grace_period(
    runtime: Runtime, register: Callable[..., None]
) -> None:
    started = asyncio.Event()

    async def handle(ctx: JobContext, job: Job) -> None:
        started.set()
        await asyncio.sleep(30)

    register(KIND, handle)
    job = await add(runtime)
    assert job is not None
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(runtime).run(stop, grace_seconds=0.2))
    await asyncio.wait_for(started.wait(), timeout=5)
    assert (await row(runtime, job.id)).status == JobStatus.running
    began = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert time.monotonic() - began < 3
    stored = await row(runtime, job.id)
    assert (stored.status, stored.attempts, stored.lease_owner) == (JobStatus.queued, 0, None)
    assert len(await claim(runtime, "next-worker")) == 1  # due at once for the next worker


# --- concurrent claimers (PostgreSQL: FOR UPDATE SKIP LOCKED) -------------------------------------


async def test_overlapping_claims_never_take_the_same_job(
    runtime: Runtime, database_url: str
) -> None:
    if "sqlite" in database_url:
        pytest.skip("SQLite has one writer at a time; SKIP LOCKED is PostgreSQL's")
    ids = set(await add_many(runtime, 50))
    now = runtime.clock.now()

    async def second_claims() -> list[Job]:
        async with runtime.sessions() as second, second.begin():
            return await jobs.claim_due_jobs(
                second, worker_id="b", now=now, limit=50, lease_seconds=60
            )

    async with runtime.sessions() as first, first.begin():
        mine = await jobs.claim_due_jobs(first, worker_id="a", now=now, limit=20, lease_seconds=60)
        await first.flush()
        # The first transaction is still open, its rows locked and not yet committed. SKIP
        # LOCKED: the second claimer neither waits for them nor takes them.
        theirs = await asyncio.wait_for(second_claims(), timeout=5)
    a, b = {j.id for j in mine}, {j.id for j in theirs}
    assert len(a) == 20
    assert len(b) == 30
    assert a.isdisjoint(b)
    assert a | b == ids
    owners = Counter(j.lease_owner for j in await rows(runtime))
    assert owners == {"a": 20, "b": 30}


async def _someone_waits_for_a_lock(rt: Runtime) -> bool:
    async with rt.session() as session:
        result = await session.exec(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
        )
        return int(result.scalar_one()) > 0


@pytest.mark.parametrize("writer", ["finish_many", "extend_leases"])
async def test_multi_row_job_writes_lock_in_id_order(
    runtime: Runtime, database_url: str, writer: str
) -> None:
    """A batch of finishes and a heartbeat write several jobs each: both take the rows in id
    order, so neither can hold one row while waiting for another that the other holds."""
    if "sqlite" in database_url:
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer at a time")
    await add_many(runtime, 2)
    low, high = sorted(await claim(runtime, "w1"), key=lambda j: j.id)
    now = runtime.clock.now()

    async def write_both() -> None:
        async with runtime.session() as session:
            if writer == "finish_many":
                await jobs.finish_many(session, [high, low], now=now)
            else:
                await jobs.extend_leases(
                    session, worker_id="w1", job_ids=[high.id, low.id], now=now, lease_seconds=60
                )

    async with runtime.sessions() as other, other.begin():
        locked = select(Job).with_for_update()
        await other.exec(locked.where(col(Job.id) == low.id))
        writing = asyncio.create_task(write_both())
        await wait_until(lambda: _someone_waits_for_a_lock(runtime))
        # The writer waits for the first row in id order and holds nothing yet: the other
        # transaction takes the second row at once. (Unordered, it would hold it: deadlock.)
        await asyncio.wait_for(other.exec(locked.where(col(Job.id) == high.id)), timeout=5)
    await asyncio.wait_for(writing, timeout=5)
    if writer == "finish_many":
        assert {(await row(runtime, j.id)).status for j in (low, high)} == {JobStatus.succeeded}


async def test_two_workers_run_each_job_exactly_once(
    runtime: Runtime, register: Callable[..., None], database_url: str
) -> None:
    if "sqlite" in database_url:
        pytest.skip("concurrent claimers are a PostgreSQL matter")
    ran: list[str] = []

    async def handle(ctx: JobContext, job: Job) -> None:
        await asyncio.sleep(0)
        ran.append(job.id)

    register(KIND, handle)
    ids = await add_many(runtime, 200)
    one, two = Worker(runtime, concurrency=8), Worker(runtime, concurrency=8)
    done = await asyncio.gather(one.drain(), two.drain())
    assert sum(done) == 200
    assert all(done), "both workers took a share"
    counts = Counter(ran)
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}
    assert {j.status for j in await rows(runtime)} == {JobStatus.succeeded}


async def test_a_job_that_keeps_killing_its_worker_fails_at_max_attempts(service) -> None:  # type: ignore[no-untyped-def]
    from app.jobs import service as jobs_service
    from app.jobs.models import Job, JobStatus

    rt = service.runtime
    async with rt.session() as session:
        job = await jobs_service.enqueue(
            session, "test-engine.never-runs", {}, now=service.clock.now(), max_attempts=2
        )
    for worker in ("w1", "w2"):
        async with rt.session() as session:
            claimed = await jobs_service.claim_due_jobs(
                session, worker_id=worker, now=service.clock.now(), limit=10, lease_seconds=60
            )
        assert [c.id for c in claimed] == [job.id]
        service.clock.advance(seconds=61)  # the worker died: its lease runs out
    async with rt.session() as session:
        claimed = await jobs_service.claim_due_jobs(
            session, worker_id="w3", now=service.clock.now(), limit=10, lease_seconds=60
        )
        assert claimed == []
    async with rt.session() as session:
        stored = await session.get(Job, job.id)
        assert stored.status == JobStatus.failed
        assert "worker lost" in stored.last_error


async def test_a_job_lost_on_its_last_attempt_is_never_claimed_between_checks(service) -> None:  # type: ignore[no-untyped-def]
    """A busy worker fails lost jobs only every few seconds; in between, its claims still
    never take one that used its last attempt."""
    from app.jobs import service as jobs_service
    from app.jobs.models import Job, JobStatus
    from app.jobs.worker import FAIL_LOST_EVERY, Worker

    rt = service.runtime
    async with rt.session() as session:
        job = await jobs_service.enqueue(
            session, "test-engine.never-runs", {}, now=service.clock.now(), max_attempts=1
        )
    async with rt.session() as session:
        [first] = await jobs_service.claim_due_jobs(
            session, worker_id="w1", now=service.clock.now(), limit=10, lease_seconds=60
        )
    assert first.id == job.id
    service.clock.advance(seconds=61)  # w1 died on the job's only attempt
    async with rt.session() as session:
        again = await jobs_service.claim_due_jobs(
            session,
            worker_id="w2",
            now=service.clock.now(),
            limit=10,
            lease_seconds=60,
            fail_lost=False,
        )
        assert again == []
        assert (await session.get(Job, job.id)).status == JobStatus.running  # not failed yet

    worker = Worker(rt, concurrency=4)
    assert worker._fail_lost_due()  # the first claim checks
    assert not worker._fail_lost_due()  # the next ones, for FAIL_LOST_EVERY seconds, do not
    worker._lost_checked_at -= FAIL_LOST_EVERY  # type: ignore[operator]
    assert await worker._claim_free_slots() == []  # this one checks, and fails the job
    async with rt.session() as session:
        stored = await session.get(Job, job.id)
        assert stored.status == JobStatus.failed
        assert stored.last_error == "worker lost during attempt 1 of 1"


def test_a_job_row_names_every_column_of_the_job_table() -> None:
    """Intake inserts ``job_row`` itself: a column it left out would be written as NULL."""
    from app.jobs.service import JOB_TABLE, job_row

    row = job_row("mail.deliver", {"message_id": "msg_1"}, now=datetime.now(UTC))

    assert set(row) == {column.name for column in JOB_TABLE.columns}
