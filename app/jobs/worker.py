"""The worker loop: claim due jobs, run their handlers concurrently, keep leases alive, retry
or give up, and enqueue periodic ticks. Runs inside ``dsr serve`` or alone as ``dsr worker``.

A handler does its external I/O outside database transactions and opens short ones through
``ctx.session()``; the worker records the job's end in its own transaction. A job whose
worker dies is claimed again once its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from typing import Any

from app.jobs import service as jobs
from app.jobs import wakeup
from app.jobs.batching import coalescer
from app.jobs.models import Job
from app.jobs.registry import FINISHED, HANDLERS, PERIODIC, JobError
from app.jobs.retry import GiveUp, decide
from app.runtime import Runtime

log = logging.getLogger("dsr.jobs")


FAIL_LOST_EVERY = 5.0  # seconds
# After a claim that emptied the queue, the next one waits this long, so that the work queued
# meanwhile (the e-mails of a stream of intakes, the calls of a fan-out) is claimed by one
# statement and its handlers' steps batch (``app.jobs.batching``). Without it a worker fed
# one job at a time claimed, read and committed once per job: at 450 intakes/s its e-mail
# delivery cost 1.6 ms of CPU per mail, 1.3 ms with it. A backlog is claimed at once.
GATHER_SECONDS = 0.02

JobContext = Runtime  # what handlers get: settings, clock, sessions, HTTP client, sealer


def payload_of(job: Job) -> dict[str, Any]:
    return json.loads(job.payload)


class Worker:
    def __init__(
        self,
        ctx: JobContext,
        *,
        concurrency: int = 4,
        lease_seconds: float = 60,
        worker_id: str | None = None,
        gather_seconds: float = GATHER_SECONDS,
    ) -> None:
        self.ctx = ctx
        self.concurrency = max(1, concurrency)
        self.lease_seconds = lease_seconds
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._in_flight: dict[str, Job] = {}
        self._wake = asyncio.Event()
        self._periodic_due: dict[str, float] = {}
        self._batches: dict[str, Any] = {}
        self.claim_batch = max(1, self.concurrency // 4)
        self._lost_checked_at: float | None = None
        self.gather_seconds = gather_seconds
        self._queue_emptied = False  # the last claim took fewer jobs than it had room for

    def _fail_lost_due(self) -> bool:
        """Whether this claim also fails the jobs lost on their last attempt: on the first
        claim, then every ``FAIL_LOST_EVERY`` seconds (leases last a minute; the extra
        statement on every claim of a busy worker was work for nothing)."""
        now = asyncio.get_running_loop().time()
        if self._lost_checked_at is not None and now - self._lost_checked_at < FAIL_LOST_EVERY:
            return False
        self._lost_checked_at = now
        return True

    # --- one round -----------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim what is due (up to the free slots) and run it to the end. Returns the count."""
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        async with self.ctx.session() as session:
            claimed = await jobs.claim_due_jobs(
                session,
                worker_id=self.worker_id,
                now=self.ctx.clock.now(),
                limit=free,
                lease_seconds=self.lease_seconds,
            )
        if not claimed:
            return 0
        await asyncio.gather(*(self._run(job) for job in claimed))
        return len(claimed)

    async def drain(self, *, max_rounds: int = 1000) -> int:
        """Run rounds until nothing is due (tests and one-shot runs)."""
        total = 0
        for _ in range(max_rounds):
            done = await self.run_once()
            if not done:
                return total
            total += done
        return total

    async def _run(self, job: Job) -> None:
        self._in_flight[job.id] = job
        handler = HANDLERS.get(job.kind)
        try:
            if handler is None:
                raise JobError(f"no handler for job kind {job.kind!r}", permanent=True)
            outcome = await handler(self.ctx, job)
        except asyncio.CancelledError:
            await self._release(job)
            raise
        except JobError as exc:
            await self._failed(job, str(exc), permanent=exc.permanent, retry_after=exc.retry_after)
        except Exception as exc:  # a handler's bug or a dependency's failure: retried
            log.exception("jobs.handler_crashed", extra={"job_id": job.id, "kind": job.kind})
            await self._failed(job, f"{type(exc).__name__}", permanent=False, retry_after=None)
        else:
            if outcome is not FINISHED:
                await self._succeeded(job)
            log.debug("jobs.succeeded", extra={"job_id": job.id, "kind": job.kind})
        finally:
            self._in_flight.pop(job.id, None)
            self._wake.set()

    async def _succeeded(self, job: Job) -> None:
        """Mark a job succeeded; the jobs that end in the same moment share one transaction
        (e-mail deliveries, package assemblies... end in bursts)."""

        async def many(done: list[Job]) -> list[None]:
            async with self.ctx.session() as session:
                await jobs.finish_many(session, done, now=self.ctx.clock.now())
            return [None] * len(done)

        async def one(done: Job) -> None:
            async with self.ctx.session() as session:
                await jobs.mark_succeeded(
                    session, done, worker_id=self.worker_id, now=self.ctx.clock.now()
                )

        await coalescer(self._batches, "jobs.succeeded", many, one).submit(job)

    async def _failed(
        self, job: Job, error: str, *, permanent: bool, retry_after: float | None
    ) -> None:
        settings, now = self.ctx.settings, self.ctx.clock.now()
        decision = (
            GiveUp(error)
            if permanent
            else decide(
                attempt=job.attempts,
                max_attempts=job.max_attempts,
                base=settings.retry_base_seconds,
                cap=settings.retry_cap_seconds,
                retry_after=retry_after,
            )
        )
        async with self.ctx.session() as session:
            if isinstance(decision, GiveUp):
                await jobs.mark_failed(session, job, worker_id=self.worker_id, now=now, error=error)
                log.warning("jobs.failed", extra={"job_id": job.id, "kind": job.kind})
            else:
                await jobs.reschedule(
                    session,
                    job,
                    worker_id=self.worker_id,
                    now=now,
                    delay_seconds=decision.delay_seconds,
                    error=error,
                )
                log.info("jobs.retry_scheduled", extra={"job_id": job.id, "kind": job.kind})

    async def _release(self, job: Job) -> None:
        with contextlib.suppress(Exception):
            async with self.ctx.session() as session:
                await jobs.release(session, job, worker_id=self.worker_id, now=self.ctx.clock.now())

    # --- periodic ticks ------------------------------------------------------------------

    async def enqueue_periodic(self, *, force: bool = False) -> None:
        """Queue each periodic kind whose interval has passed (one queued copy across all
        workers, thanks to the queueing lock)."""
        loop_now = asyncio.get_running_loop().time()
        due = [
            p for p in PERIODIC.values() if force or self._periodic_due.get(p.kind, 0.0) <= loop_now
        ]
        if not due:
            return
        async with self.ctx.session() as session:
            for tick in due:
                await jobs.enqueue(
                    session,
                    tick.kind,
                    {},
                    now=self.ctx.clock.now(),
                    queueing_lock=f"periodic:{tick.kind}",
                    max_attempts=1,
                )
                self._periodic_due[tick.kind] = loop_now + tick.every_seconds

    # --- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, grace_seconds: float = 10) -> None:
        """Work until ``stop`` is set, then finish in-flight jobs (or release them)."""
        log.info("jobs.worker_started", extra={"worker_id": self.worker_id})
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        tasks: set[asyncio.Task[None]] = set()
        poll = self.ctx.settings.worker_poll_seconds
        self._wake = asyncio.Event()
        try:
            async with wakeup.subscribed(self.ctx.engine, self._wake):
                while not stop.is_set():
                    # Cleared before claiming: a wake-up that comes during the claim is kept.
                    self._wake.clear()
                    try:
                        await self.enqueue_periodic()
                        claimed = await self._claim_free_slots()
                    except Exception:
                        log.exception("jobs.claim_failed")
                        claimed = []
                    for job in claimed:
                        task = asyncio.create_task(self._run(job))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    if not claimed or len(self._in_flight) >= self.concurrency:
                        # Go on the moment a job ends or new work is queued (jobs take
                        # milliseconds; a fixed sleep here capped throughput), else poll.
                        await self._pause(stop, self._wake, timeout=poll)
                    if self._queue_emptied and self.gather_seconds > 0:
                        await self._pause(stop, None, timeout=self.gather_seconds)
        finally:
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            log.info("jobs.worker_stopped", extra={"worker_id": self.worker_id})

    @staticmethod
    async def _pause(stop: asyncio.Event, wake: asyncio.Event | None, *, timeout: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _claim_free_slots(self) -> list[Job]:
        free = self.concurrency - len(self._in_flight)
        # While jobs run, claim once a quarter of the slots is free rather than each slot as
        # it frees: jobs claimed together start together, so their handlers' transactions
        # batch (``app.jobs.batching``); one by one, a busy worker's batches shrink to one.
        if free <= 0 or (self._in_flight and free < self.claim_batch):
            return []
        async with self.ctx.session() as session:
            claimed = await jobs.claim_due_jobs(
                session,
                worker_id=self.worker_id,
                now=self.ctx.clock.now(),
                fail_lost=self._fail_lost_due(),
                limit=free,
                lease_seconds=self.lease_seconds,
            )
        self._queue_emptied = len(claimed) < free
        for job in claimed:
            self._in_flight[job.id] = job
        return claimed

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.lease_seconds / 3)
            with contextlib.suppress(Exception):
                async with self.ctx.session() as session:
                    await jobs.extend_leases(
                        session,
                        worker_id=self.worker_id,
                        job_ids=list(self._in_flight),
                        now=self.ctx.clock.now(),
                        lease_seconds=self.lease_seconds,
                    )
