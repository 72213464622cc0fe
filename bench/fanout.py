"""Connector fan-out benchmark of the DSR service (the three targets of issue 3).

One command, against a throwaway PostgreSQL database (created and dropped here)::

    .venv/bin/python bench/fanout.py

Every process is the service's own (``dsr serve`` with ``DSR_WORKER=off``, ``dsr worker``)
or this file's connector server (``--serve-connectors``, a bare ASGI app under uvicorn with
uvloop and httptools), on 127.0.0.1 only. The connector server answers ``POST
/{delay_ms}/{name}`` with ``{"status": "completed", "outcome": "not_found"}`` after
``delay_ms`` and records when each call arrived (``time.monotonic()``, which is one clock
for every process on Linux). Requests are entered by staff (``POST /v1/admin/requests``,
``identity_verified: true``) of a review type (``--type``, default access, is put in
``DSR_REVIEW_TYPES``), so they wait in ``pending_review`` until the bench approves them
(``POST .../approve``): the approval is the moment the clock starts. A request that all its
connectors answered but that stays ``in_progress`` with nothing left to run is reported as
stranded (a missed settle) instead of being waited for.

(a) one request, 100 webhook connectors answering after 100 ms: approval -> ``completed``
    (polled in the database every 10 ms), one idle ``dsr worker``; a warm-up then repeats.
(c) approval -> first connector call, one request at a time (10 connectors answering at
    once), while one ``dsr worker`` idles between requests.
(b) sustained call throughput: for each ``--b-processes`` value k, k ``dsr worker``
    processes are started, left to go idle, then frozen (SIGSTOP); N requests x 10
    connectors (answering at once) are approved; the workers are thawed (SIGCONT) together
    and the bench waits until every request is completed and the job queue is empty. Calls/s
    are counted from the first to the last call recorded by the connector server, and also
    from the thaw (the backlog's effective enqueue) to the last request completed.

Every wait is bounded; all children are stopped at the end, also on errors. Prints a
Markdown summary and writes ``bench/out/fanout-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from cpuquota import CpuQuotas  # noqa: E402  (a sibling module of this file)

HOST = "127.0.0.1"
TARGETS = {"a_seconds": 2.0, "b_calls_per_s": 500.0, "b_scaling": 1.6, "c_p50_ms": 200.0}
RESULT = b'{"status":"completed","outcome":"not_found"}'
SCOPES = ["requests:read", "requests:write", "connectors:write"]


# --- the connector server (its own process) ---------------------------------------------------


class ConnectorApp:
    """``POST /{delay_ms}/{name}``: record the call, wait ``delay_ms``, answer a result.
    ``GET /stats?since=N``: the calls recorded from index N on, as
    ``[arrival, name, request_id, job_id]``, plus the peak of calls in flight since the last
    ``GET /reset-peak``. ``GET /first?request_id=...&timeout=s``: the arrival of that
    request's first call, waiting for it up to ``timeout``. Signatures are not checked: the
    connector side is kept as cheap as possible (it shares the two cores)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, str, str]] = []
        self.first: dict[str, float] = {}
        self.waiters: dict[str, list[asyncio.Future[float]]] = {}
        self.in_flight = 0
        self.peak = 0
        self.bad = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            await self._call(scope, receive, send)
            return
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
        )
        path = scope["path"]
        if path == "/stats":
            since = int(query.get("since", 0))
            body: Any = {
                "count": len(self.calls),
                "calls": self.calls[since:],
                "peak_in_flight": self.peak,
                "in_flight": self.in_flight,
                "bad": self.bad,
            }
        elif path == "/first":
            rid = query.get("request_id", "")
            if rid not in self.first:
                future = asyncio.get_running_loop().create_future()
                self.waiters.setdefault(rid, []).append(future)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, float(query.get("timeout", 10)))
            body = {"request_id": rid, "first": self.first.get(rid)}
        elif path == "/reset-peak":
            self.peak = self.in_flight
            body = {"peak_in_flight": self.peak}
        elif path == "/healthz":
            body = {"ok": True}
        else:
            await self._answer(send, 404, b'{"detail":"not found"}')
            return
        await self._answer(send, 200, json.dumps(body).encode())

    async def _call(self, scope: dict, receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        arrived = time.monotonic()
        try:
            delay_ms, name = scope["path"].strip("/").split("/", 1)
            delay = int(delay_ms) / 1000
            payload = json.loads(b"".join(chunks))
            request_id, job_id = payload["request_id"], payload["job_id"]
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            await self._answer(send, 400, b'{"detail":"not a connector call"}')
            return
        self.calls.append((arrived, name, request_id, job_id))
        if request_id not in self.first:
            self.first[request_id] = arrived
            for future in self.waiters.pop(request_id, []):
                if not future.done():
                    future.set_result(arrived)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:
            self.in_flight -= 1
        await self._answer(send, 200, RESULT)

    @staticmethod
    async def _answer(send: Any, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def serve_connectors(port: int) -> None:
    import uvicorn

    uvicorn.run(
        ConnectorApp(),
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


# --- the benchmark ---------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class PhaseError(RuntimeError):
    pass


class LockSampler:
    """Samples, every ``interval`` s, the bench database's sessions that wait on a lock: the
    statement waiting, and the last statement of each session blocking one (for a session
    idle in transaction: the statement that took the lock or one after it)."""

    SQL = (
        "SELECT w.pid AS wpid, b.pid AS bpid, "
        "left(regexp_replace(w.query, '\\s+', ' ', 'g'), 70) AS waiting, "
        "left(regexp_replace(b.query, '\\s+', ' ', 'g'), 70) AS blocker "
        "FROM pg_stat_activity w "
        "CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid) "
        "JOIN pg_stat_activity b ON b.pid = bp.pid "
        "WHERE w.datname = $1 AND w.wait_event_type = 'Lock'"
    )

    def __init__(self, url: str, database: str, interval: float = 0.2) -> None:
        self.url, self.database, self.interval = url, database, interval
        self.samples = 0
        self.waiting: dict[str, int] = {}
        self.blockers: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LockSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        import asyncpg

        try:
            conn = await asyncpg.connect(self.url)
            try:
                while not self._stop.is_set():
                    rows = await conn.fetch(self.SQL, self.database)
                    self.samples += 1
                    waiters = {row["wpid"]: row["waiting"] for row in rows}
                    blockers = {row["bpid"]: row["blocker"] for row in rows}
                    for tally, sessions in ((self.waiting, waiters), (self.blockers, blockers)):
                        for statement in sessions.values():
                            tally[statement] = tally.get(statement, 0) + 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.interval)
            finally:
                await conn.close()
        except Exception as exc:  # an aid only: never fail the run for it
            log(f"lock sampler stopped: {exc!r}")

    def summary(self) -> dict[str, dict[str, float]]:
        """Average number of sessions waiting, and blocking others, per sample, by statement."""

        def top(tally: dict[str, int]) -> dict[str, float]:
            ordered = sorted(tally.items(), key=lambda kv: -kv[1])[:6]
            return {k: round(v / max(1, self.samples), 1) for k, v in ordered}

        return {"waiting": top(self.waiting), "blocked_by": top(self.blockers)}


class CpuTimeline:
    """CPU snapshots every ``interval`` s during a phase, so that the CPU split can be read
    over the window that matters (first -> last connector call) rather than the whole
    backlog, whose fan-out and settling phases use the processes differently."""

    def __init__(self, groups: dict[str, int], database: str, interval: float = 0.25) -> None:
        self.groups, self.database, self.interval = groups, database, interval
        self.points: list[tuple[float, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CpuTimeline:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        from intake import cpu_snapshot

        while True:
            self.points.append((time.monotonic(), cpu_snapshot(self.groups, self.database)))
            await asyncio.sleep(self.interval)

    def share(self, start: float, end: float) -> tuple[dict[str, int], float] | None:
        """CPU shares between the last snapshot at or before ``start`` and the first at or
        after ``end`` (so the window covers the span), and that window's length."""
        from intake import cpu_share

        before = [p for p in self.points if p[0] <= start]
        after = [p for p in self.points if p[0] >= end]
        if not before or not after:
            return None
        (t0, s0), (t1, s1) = before[-1], after[0]
        return cpu_share(s0, s1, t1 - t0), t1 - t0


class FanoutBench:
    def __init__(self, args: argparse.Namespace) -> None:
        from intake import Database

        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="dsr-fanout-"))
        self.db = Database("postgresql", self.workdir)  # dsr_bench_<pid>_<random>
        self.data_dir = self.workdir / "var"
        self.data_dir.mkdir()
        from app.config import new_key

        self.encryption_key = new_key()
        self.procs: list[Any] = []
        self.server_port = 0
        self.conn_port = 0
        self.pg: Any = None
        self.api: Any = None
        self.conn: Any = None
        self.pending: list[str] = []  # request ids waiting in pending_review
        self.n_workers = 0
        self.servers: dict[str, int] = {}  # CPU groups: the API server, the connector server
        self.quotas: CpuQuotas | None = None
        if args.worker_cpu is not None and "b" in args.phases:
            self.quotas = CpuQuotas(args.worker_cpu)  # QuotaUnavailable says why not
        self.results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "argv": sys.argv,
            "cores": os.cpu_count(),
            "targets": TARGETS,
        }

    # --- processes -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        from intake import STAFF_SECRET

        env = {k: v for k, v in os.environ.items() if not k.startswith("DSR_")}
        env.update(
            DSR_ENV="development",
            DSR_DATABASE_URL=self.db.url,
            DSR_DATA_DIR=str(self.data_dir),
            DSR_ENCRYPTION_KEY=self.encryption_key,
            DSR_STAFF_JWT_SECRET=STAFF_SECRET,
            DSR_WORKER="off",
            DSR_PUBLIC_URL=f"http://{HOST}:{self.server_port}",
            DSR_REVIEW_TYPES=self.args.type,
            DSR_CONNECTOR_ALLOWED_HOSTS=HOST,
        )
        if self.args.worker_concurrency:
            env["DSR_WORKER_CONCURRENCY"] = str(self.args.worker_concurrency)
        return env

    def dsr(self) -> str:
        return str(Path(sys.executable).with_name("dsr"))

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Any:
        from intake import Proc

        proc = Proc(name, argv, env or self.env(), self.workdir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop(self, proc: Any) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)
        if self.quotas is not None:
            self.quotas.release_all()

    def throttled(self, worker: Any) -> float | None:
        return None if self.quotas is None else self.quotas.throttled_seconds(worker.name)

    def start_worker(self) -> Any:
        self.n_workers += 1
        argv = [self.dsr(), "worker"]
        return self.start(f"worker-{self.n_workers}", argv)

    async def worker_started(self, proc: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise PhaseError(f"{proc.name} exited; see {proc.logfile}")
            with contextlib.suppress(OSError):
                if b"jobs.worker_started" in proc.logfile.read_bytes():
                    return
            await asyncio.sleep(0.1)
        raise PhaseError(f"{proc.name} did not start within {timeout} s")

    # --- service API and database ----------------------------------------------------------

    async def q(self, sql: str, *params: Any) -> Any:
        return await self.pg.fetchval(sql, *params)

    async def busy_jobs(self) -> int:
        return int(
            await self.q(
                "SELECT count(*) FROM job WHERE status = 'running' "
                "OR (status = 'queued' AND run_after <= now())"
            )
        )

    async def wait_idle(self, timeout: float = 60) -> None:
        """Until no job is running or due (twice in a row, 100 ms apart)."""
        deadline, quiet = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            quiet = quiet + 1 if await self.busy_jobs() == 0 else 0
            if quiet >= 2:
                return
            await asyncio.sleep(0.1)
        raise PhaseError(f"the job queue did not empty within {timeout} s")

    async def check_request_failures(self, ids: list[str]) -> None:
        stuck = await self.q(
            "SELECT count(*) FROM dsr_request WHERE id = ANY($1::text[]) "
            "AND status = 'action_required'",
            ids,
        )
        if stuck:
            error = await self.q(
                "SELECT last_error FROM connector_job WHERE request_id = ANY($1::text[]) "
                "AND status = 'failed' LIMIT 1",
                ids,
            )
            raise PhaseError(f"{stuck} request(s) went to action_required: {error}")

    async def register(self, prefix: str, count: int, delay_ms: int) -> list[str]:
        ids = []
        for i in range(count):
            name = f"{prefix}-{i:03d}"
            answer = await self.api.post(
                "/v1/admin/connectors",
                json={
                    "name": f"bench {name}",
                    "url": f"http://{HOST}:{self.conn_port}/{delay_ms}/{name}",
                    "mode": "webhook",
                    "request_types": [self.args.type],
                    "identity_types": ["email"],
                    "timeout_s": 60,
                    "max_attempts": 1,
                },
            )
            if answer.status_code != 201:
                raise PhaseError(f"connector registration: {answer.status_code} {answer.text}")
            ids.append(answer.json()["id"])
        return ids

    async def unregister(self, ids: list[str]) -> None:
        for connector_id in ids:
            answer = await self.api.delete(f"/v1/admin/connectors/{connector_id}")
            if answer.status_code != 204:
                raise PhaseError(f"connector removal: {answer.status_code} {answer.text}")

    async def create_requests(self, count: int) -> None:
        """``count`` requests of ``--type`` entered by staff, identity verified: they wait in
        pending_review (DSR_REVIEW_TYPES is that type)."""
        now = datetime.now(UTC).isoformat()
        tag = secrets.token_hex(3)
        sem = asyncio.Semaphore(8)

        async def one(n: int) -> str:
            async with sem:
                answer = await self.api.post(
                    "/v1/admin/requests",
                    json={
                        "type": self.args.type,
                        "subject": {"email": f"fan-{tag}-{n}@example.org"},
                        "channel": "email",
                        "received_at": now,
                        "identity_verified": True,
                        "language": "en",
                    },
                )
            if answer.status_code != 201 or answer.json()["status"] != "pending_review":
                raise PhaseError(f"staff intake: {answer.status_code} {answer.text[:300]}")
            return str(answer.json()["id"])

        self.pending += await asyncio.gather(*(one(n) for n in range(count)))

    def take(self, count: int) -> list[str]:
        taken, self.pending = self.pending[:count], self.pending[count:]
        if len(taken) < count:
            raise PhaseError("not enough pending requests were created")
        return taken

    async def approve(self, request_id: str) -> None:
        answer = await self.api.post(f"/v1/admin/requests/{request_id}/approve")
        if answer.status_code != 200:
            raise PhaseError(f"approve: {answer.status_code} {answer.text[:300]}")

    async def wait_completed(
        self, request_id: str, timeout: float, interval: float
    ) -> float | None:
        """When the request was seen ``completed``; None when it is stranded: not completed
        while no job has been due or running for a second (a settle was missed: only the
        sweep, a minute or more later, would complete it)."""
        deadline, polls, idle_since = time.monotonic() + timeout, 0, None
        while time.monotonic() < deadline:
            status = await self.q("SELECT status FROM dsr_request WHERE id = $1", request_id)
            if status == "completed":
                return time.monotonic()
            if status == "action_required":
                await self.check_request_failures([request_id])
            polls += 1
            if polls % 10 == 0:
                if await self.busy_jobs():
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= 1.0:
                    log(f"  STRANDED: {request_id} {await self.diagnose([request_id])}")
                    return None
            await asyncio.sleep(interval)
        raise PhaseError(
            f"request {request_id} not completed within {timeout} s: "
            f"{await self.diagnose([request_id])}"
        )

    async def diagnose(self, ids: list[str]) -> dict[str, Any]:
        """Where a request is stuck: its status, its connector jobs and engine jobs."""
        rows = await self.pg.fetch(
            "SELECT 'request ' || status AS what, count(*) FROM dsr_request "
            "WHERE id = ANY($1::text[]) GROUP BY 1 "
            "UNION ALL SELECT 'connector_job ' || status, count(*) FROM connector_job "
            "WHERE request_id = ANY($1::text[]) GROUP BY 1 "
            "UNION ALL SELECT 'job ' || kind || ' ' || status, count(*) FROM job "
            "WHERE request_id = ANY($1::text[]) OR status IN ('queued', 'running') GROUP BY 1",
            ids,
        )
        return {row["what"]: row["count"] for row in rows}

    async def calls_since(self, index: int) -> tuple[list[list[Any]], int]:
        stats = (await self.conn.get("/stats", params={"since": index})).json()
        return stats["calls"], int(stats["peak_in_flight"])

    async def call_count(self) -> int:
        return int((await self.conn.get("/stats", params={"since": 10**9})).json()["count"])

    async def quiet(self, what: str) -> None:
        from intake import wait_until_quiet

        if self.args.quiet_wait <= 0:
            return
        busy = await wait_until_quiet(self.args.quiet_cpu, self.args.quiet_wait)
        if busy >= self.args.quiet_cpu:
            log(f"machine still busy ({busy:.0f}% of a core) before {what}: figures noisy")

    # --- the run ----------------------------------------------------------------------------

    async def run(self) -> None:
        import asyncpg
        import httpx
        from intake import STAFF_SECRET, free_port, wait_healthy

        import app
        from app.security.staff import mint_staff_token

        args = self.args
        self.results["app_source"] = str(Path(app.__file__).parent)
        log(f"service code from {self.results['app_source']}")
        log(f"work dir {self.workdir}; database {self.db.url}")
        await self.db.create()
        try:
            self.server_port, self.conn_port = free_port(), free_port()
            subprocess.run(
                [self.dsr(), "migrate"],
                env=self.env(),
                check=True,
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
            )
            self.pg = await asyncpg.connect(self.db.url)
            connectors = self.start(
                "connectors",
                [sys.executable, __file__, "--serve-connectors", str(self.conn_port)],
                {k: v for k, v in os.environ.items() if not k.startswith("DSR_")},
            )
            server = self.start(
                "serve", [self.dsr(), "serve", "--host", HOST, "--port", str(self.server_port)]
            )
            self.servers = {"server": server.pid, "connectors": connectors.pid}
            await wait_healthy(self.conn_port, connectors)
            await wait_healthy(self.server_port, server)
            token = mint_staff_token(
                secret=STAFF_SECRET, subject="bench", scopes=SCOPES, ttl_seconds=7200
            )
            async with (
                httpx.AsyncClient(
                    base_url=f"http://{HOST}:{self.server_port}",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=60,
                    trust_env=False,
                ) as self.api,
                httpx.AsyncClient(
                    base_url=f"http://{HOST}:{self.conn_port}", timeout=60, trust_env=False
                ) as self.conn,
            ):
                await self.phases()
        finally:
            self.stop_all()
            if self.pg is not None:
                with contextlib.suppress(Exception):
                    await self.pg.close()
            await self.db.drop()
            if args.keep:
                log(f"logs kept in {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        self.report()

    async def phases(self) -> None:
        args = self.args
        wanted = args.phases
        count = 0
        if "a" in wanted:
            count += 1 + args.a_repeats
        if "c" in wanted:
            count += args.c_warmup + args.c_requests
        if "b" in wanted:
            count += args.b_requests * len(args.b_processes)
        started = time.perf_counter()
        await self.create_requests(count)
        log(f"created {count} pending_review requests in {time.perf_counter() - started:.1f} s")
        idle_worker = None
        if wanted & {"a", "c"}:
            idle_worker = self.start_worker()
            await self.worker_started(idle_worker)
            await self.wait_idle(timeout=120)  # the acknowledgement e-mails of the intake
        if "a" in wanted:
            self.results["a"] = await self.phase_a(idle_worker)
        b_ids: list[str] = []
        if wanted & {"b", "c"}:
            b_ids = await self.register("b", args.b_connectors, 0)
        if "c" in wanted:
            self.results["c"] = await self.phase_c(idle_worker)
        if idle_worker is not None:
            self.stop(idle_worker)
        if "b" in wanted:
            self.results["b"] = [await self.phase_b(k, i) for i, k in enumerate(args.b_processes)]
        if b_ids:
            await self.unregister(b_ids)

    async def phase_a(self, worker: Any) -> dict[str, Any]:
        from intake import cpu_share, cpu_snapshot

        args = self.args
        log(f"(a) {args.a_connectors} connectors answering after {args.a_delay_ms} ms")
        ids = await self.register("a", args.a_connectors, args.a_delay_ms)
        runs = []
        try:
            for i in range(1 + args.a_repeats):
                await self.wait_idle()
                await self.quiet("(a)")
                await asyncio.sleep(args.gap)
                request_id = self.take(1)[0]
                index = await self.call_count()
                await self.conn.get("/reset-peak")
                groups = {"worker": worker.pid, **self.servers}
                before = cpu_snapshot(groups, self.db.name)
                t0 = time.monotonic()
                await self.approve(request_id)
                t_answer = time.monotonic()
                t_done = await self.wait_completed(request_id, timeout=60, interval=0.01)
                after = cpu_snapshot(groups, self.db.name)
                seconds = (t_done or time.monotonic()) - t0
                calls, peak = await self.calls_since(index)
                mine = [c[0] for c in calls if c[2] == request_id]
                run = {
                    "warmup": i == 0,
                    "approval_to_completed_s": round(seconds, 3) if t_done else None,
                    "approve_answer_ms": round(1000 * (t_answer - t0), 1),
                    "first_call_ms": round(1000 * (min(mine) - t0), 1) if mine else None,
                    "last_call_ms": round(1000 * (max(mine) - t0), 1) if mine else None,
                    "calls": len(mine),
                    "peak_in_flight": peak,
                    "cpu_pct_of_one_core": cpu_share(before, after, seconds),
                }
                if len(mine) != args.a_connectors:
                    raise PhaseError(f"(a) expected {args.a_connectors} calls, got {len(mine)}")
                log(
                    f"  {'warm-up' if i == 0 else f'run {i}'}: approval -> completed "
                    f"{run['approval_to_completed_s'] or 'never (stranded)'} s (approve "
                    f"answered in "
                    f"{run['approve_answer_ms']} ms; calls from {run['first_call_ms']} to "
                    f"{run['last_call_ms']} ms; peak {peak} in flight; CPU "
                    f"{run['cpu_pct_of_one_core']})"
                )
                runs.append(run)
        finally:
            await self.unregister(ids)
        measured = [r["approval_to_completed_s"] for r in runs if not r["warmup"]]
        completed = [v for v in measured if v is not None]
        return {
            "type": args.type,
            "connectors": args.a_connectors,
            "delay_ms": args.a_delay_ms,
            "worker_concurrency": args.worker_concurrency or "default",
            "runs": runs,
            "other_cpu_pct_max": max(
                r["cpu_pct_of_one_core"]["other"] for r in runs if not r["warmup"]
            ),
            "stranded": len(measured) - len(completed),
            "median_s": round(statistics.median(completed), 3) if completed else None,
            "worst_s": max(completed) if completed else None,
        }

    async def phase_c(self, worker: Any) -> dict[str, Any]:
        args = self.args
        log(
            f"(c) approval -> first call, {args.c_requests} requests one at a time "
            f"({args.b_connectors} connectors answering at once), one idle worker"
        )
        from intake import cpu_share, cpu_snapshot

        groups = {"worker": worker.pid, **self.servers}
        first_ms, approve_ms, done_ms, stranded = [], [], [], 0
        before, started = None, 0.0
        for i in range(args.c_warmup + args.c_requests):
            await self.wait_idle()
            if i == args.c_warmup:
                await self.quiet("(c)")
                before, started = cpu_snapshot(groups, self.db.name), time.monotonic()
            await asyncio.sleep(args.gap)  # the worker is idle, waiting for a wake-up
            request_id = self.take(1)[0]
            t0 = time.monotonic()
            await self.approve(request_id)
            t_answer = time.monotonic()
            first = (
                await self.conn.get("/first", params={"request_id": request_id, "timeout": 30})
            ).json()["first"]
            if first is None:
                raise PhaseError(f"(c) no connector call for {request_id} within 30 s")
            t_done = await self.wait_completed(request_id, timeout=60, interval=0.02)
            if i >= args.c_warmup:
                first_ms.append(1000 * (first - t0))
                approve_ms.append(1000 * (t_answer - t0))
                if t_done is None:
                    stranded += 1
                else:
                    done_ms.append(1000 * (t_done - t0))
        after = cpu_snapshot(groups, self.db.name)
        assert before is not None
        figures = {
            "cpu_pct_of_one_core": cpu_share(before, after, time.monotonic() - started),
            "requests": args.c_requests,
            "connectors": args.b_connectors,
            "first_call_ms": summary(first_ms),
            "approve_answer_ms": summary(approve_ms),
            "approval_to_completed_ms": summary(done_ms),
            "stranded": stranded,
            "first_call_ms_all": [round(v, 1) for v in first_ms],
        }
        log(
            f"  approval -> first call: {figures['first_call_ms']}; approve answered in "
            f"{figures['approve_answer_ms']}; -> completed {figures['approval_to_completed_ms']}"
            + (f"; STRANDED (never completed): {stranded}" if stranded else "")
        )
        log(f"  CPU over the phase (idle gaps included) {figures['cpu_pct_of_one_core']}")
        return figures

    async def phase_b(self, processes: int, run_no: int) -> dict[str, Any]:
        from intake import PgWaitSampler, cpu_share, cpu_snapshot

        args = self.args
        n = args.b_requests
        expected = n * args.b_connectors
        log(
            f"(b) {processes} worker process(es): {n} requests x {args.b_connectors} "
            f"connectors = {expected} calls"
        )
        workers = [self.start_worker() for _ in range(processes)]
        profilers: list[subprocess.Popen[bytes]] = []
        stranded: dict[str, Any] | None = None
        throttled: list[float | None] = []
        try:
            for worker in workers:
                await self.worker_started(worker)
                if self.quotas is not None:
                    self.quotas.apply(worker.pid, worker.name)
            await self.wait_idle()
            await asyncio.sleep(1)
            for worker in workers:
                os.kill(worker.pid, signal.SIGSTOP)
            ids = self.take(n)
            started = time.perf_counter()
            sem = asyncio.Semaphore(8)

            async def approve(request_id: str) -> None:
                async with sem:
                    await self.approve(request_id)

            await asyncio.gather(*(approve(r) for r in ids))
            log(
                f"  approved {n} requests (workers frozen) in {time.perf_counter() - started:.1f} s"
            )
            # Leave no maintenance for the measured window and give the planner the tables'
            # real sizes (a fresh database's statistics lag behind its growth).
            await self.pg.execute("VACUUM (ANALYZE)")
            await self.quiet(f"(b) {processes} process(es)")
            index = await self.call_count()
            await self.conn.get("/reset-peak")
            if args.profile:
                profilers = [self.profile(worker, processes, run_no) for worker in workers]
                await asyncio.sleep(0.5)
            groups = {f"worker{i + 1}": w.pid for i, w in enumerate(workers)}
            groups.update(self.servers)
            before = cpu_snapshot(groups, self.db.name)
            t_done = t_idle = None
            locks = LockSampler(self.db.url, self.db.name)
            timeline = CpuTimeline(groups, self.db.name)
            throttled = [self.throttled(worker) for worker in workers]
            async with PgWaitSampler(self.db) as sampler, locks, timeline:
                t0 = time.monotonic()
                for worker in workers:
                    os.kill(worker.pid, signal.SIGCONT)
                deadline, done, idle_polls = t0 + args.b_timeout, 0, 0
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    if t_done is None:
                        done = await self.q(
                            "SELECT count(*) FROM dsr_request WHERE id = ANY($1::text[]) "
                            "AND status = 'completed'",
                            ids,
                        )
                        if done == n:
                            t_done = time.monotonic()
                        else:
                            await self.check_request_failures(ids)
                    if await self.busy_jobs():
                        idle_polls = 0
                        continue
                    if t_done is not None:
                        t_idle = time.monotonic()
                        break
                    # Every call made and nothing left to run, yet requests not completed:
                    # stranded (a settle was missed); only the sweep would finish them.
                    idle_polls += 1
                    if idle_polls >= 40 and await self.call_count() - index >= expected:
                        t_idle = time.monotonic() - 2
                        stranded = await self.diagnose(ids)
                        log(f"  STRANDED: {n - done} requests not completed, queue empty")
                        log(f"  {stranded}")
                        break
                after = cpu_snapshot(groups, self.db.name)
            throttled = [
                None if b is None or a is None else round(a - b, 2)
                for b, a in zip(throttled, [self.throttled(w) for w in workers], strict=True)
            ]
            for profiler in profilers:
                profiler.send_signal(signal.SIGINT)
            for profiler in profilers:
                try:
                    profiler.wait(60)
                except subprocess.TimeoutExpired:
                    profiler.kill()
            if t_idle is None:
                raise PhaseError(
                    f"(b) not finished within {args.b_timeout} s: {await self.diagnose(ids)}"
                )
            calls, peak = await self.calls_since(index)
            arrivals = sorted(c[0] for c in calls)
            if len(arrivals) != expected:
                raise PhaseError(f"(b) expected {expected} calls, got {len(arrivals)}")
            span = arrivals[-1] - arrivals[0]
            in_window = timeline.share(arrivals[0], arrivals[-1])
            # From the workers' INFO lines (none when the service logs them at debug level).
            jobs_done = [w.logfile.read_bytes().count(b'"jobs.succeeded"') for w in workers]
            problems = worker_problems(workers)
        finally:
            for profiler in profilers:
                if profiler.poll() is None:
                    profiler.kill()
            for worker in workers:
                self.stop(worker)
                if self.quotas is not None:
                    self.quotas.release(worker.name)
        run = {
            "processes": processes,
            "worker_cpu_quota": self.args.worker_cpu,
            "worker_throttled_s": throttled if self.quotas is not None else None,
            "requests": n,
            "calls": len(arrivals),
            "calls_per_s_first_to_last_call": round((len(arrivals) - 1) / span, 1),
            "calls_per_s_thaw_to_all_completed": (
                round(len(arrivals) / (t_done - t0), 1) if t_done else None
            ),
            "first_call_after_thaw_ms": round(1000 * (arrivals[0] - t0), 1),
            "last_call_s": round(arrivals[-1] - t0, 3),
            "first_to_last_call_s": round(span, 3),
            "all_completed_s": round(t_done - t0, 3) if t_done else None,
            "stranded": stranded,
            "queue_empty_s": round(t_idle - t0, 3),
            "peak_in_flight": peak,
            "engine_jobs_logged_per_worker": jobs_done if any(jobs_done) else None,
            "worker_errors_and_warnings": problems,
            "cpu_pct_of_one_core": cpu_share(before, after, t_idle - t0),
            "cpu_ms_per_call": cpu_ms_per_call(before, after, len(arrivals)),
            "cpu_pct_first_to_last_call": in_window[0] if in_window else None,
            "cpu_window_s": round(in_window[1], 3) if in_window else None,
            "pg_connections": sampler.summary(),
            "pg_lock_waits": locks.summary(),
            "pg_commits_per_call": round(sampler.commits / len(arrivals), 2),
            "pg_sessions_opened": sampler.sessions_opened,
            "profiled": bool(profilers),
        }
        log(
            f"  {run['calls_per_s_first_to_last_call']} calls/s first -> last call "
            f"({run['calls']} calls in {run['first_to_last_call_s']} s); "
            f"thaw -> all completed {run['all_completed_s'] or '(never)'} s "
            f"({run['calls_per_s_thaw_to_all_completed'] or '-'} calls/s); queue empty at "
            f"{run['queue_empty_s']} s; peak {peak} calls in flight"
            + (f"; jobs per worker {jobs_done}" if any(jobs_done) else "")
        )
        log(f"  CPU {run['cpu_pct_of_one_core']}")
        if self.quotas is not None:
            log(
                f"  quota {self.args.worker_cpu} core per worker; throttled (s, per worker) "
                f"{throttled}"
            )
        if in_window:
            log(
                f"  CPU first -> last call ({run['cpu_window_s']} s around the "
                f"{run['first_to_last_call_s']} s of calls) {run['cpu_pct_first_to_last_call']}"
            )
        log(f"  CPU ms per call (thaw -> queue empty, whole backlog) {run['cpu_ms_per_call']}")
        if problems:
            log(f"  worker errors/warnings ({len(problems)} shown): {problems}")
        log(
            f"  PostgreSQL: {run['pg_commits_per_call']} commits per call; connections "
            f"{run['pg_connections']}"
        )
        log(f"  lock waits (avg sessions waiting / blocking, by statement): {run['pg_lock_waits']}")
        return run

    def profile(self, worker: Any, processes: int, run_no: int) -> subprocess.Popen[bytes]:
        out = BENCH_DIR / "out" / f"pyspy-fanout-b{run_no}-{processes}p-{worker.name}.txt"
        out.parent.mkdir(exist_ok=True)
        log(f"  py-spy record of {worker.name} (pid {worker.pid}) -> {out}")
        return subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(worker.pid),
                "--nonblocking",
                "--gil",
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    # --- the report -------------------------------------------------------------------------

    def report(self) -> None:
        out = BENCH_DIR / "out"
        out.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = out / f"fanout-{stamp}.json"
        r = self.results
        rows: list[tuple[str, str, str, str, str]] = []
        if "a" in r:
            a = r["a"]
            ok = not a["stranded"] and a["worst_s"] < TARGETS["a_seconds"]
            rows.append(
                (
                    f"(a) approval -> completed, 1 {a['type']} request x {a['connectors']} "
                    "connectors "
                    f"answering after {a['delay_ms']} ms",
                    f"median {a['median_s']} s, worst {a['worst_s']} s "
                    f"({len(a['runs']) - 1} runs"
                    + (f"; {a['stranded']} never completed: stranded" if a["stranded"] else "")
                    + ")",
                    "< 2 s",
                    verdict(ok),
                    f"{a['other_cpu_pct_max']}% (max)",
                )
            )
        if "b" in r:
            rates: dict[int, list[float]] = {}
            quota = r["b"][0]["worker_cpu_quota"]
            held = f", each held to {quota} core" if quota else ""
            for run in r["b"]:
                rate = run["calls_per_s_first_to_last_call"]
                rates.setdefault(run["processes"], []).append(rate)
                # The absolute target is for a worker process with a core to itself.
                judged = run["processes"] == 1 and not quota
                rows.append(
                    (
                        f"(b) calls/s, {run['processes']} worker process(es){held}, "
                        f"{run['calls']} calls",
                        f"{rate:,.0f} (first -> last call); "
                        + (
                            f"{run['calls_per_s_thaw_to_all_completed']:,.0f} (thaw -> all "
                            "completed)"
                            if run["calls_per_s_thaw_to_all_completed"]
                            else "requests STRANDED in_progress (a settle was missed)"
                        ),
                        ">= 500" if judged else "",
                        verdict(rate >= TARGETS["b_calls_per_s"]) if judged else "",
                        f"{run['cpu_pct_of_one_core']['other']}%",
                    )
                )
            if 1 in rates and 2 in rates:
                ratio = statistics.mean(rates[2]) / statistics.mean(rates[1])
                r["b_ratio_2_to_1"] = round(ratio, 2)
                rows.append(
                    (
                        f"(b) 2 processes / 1 process{held}",
                        f"{ratio:.2f}x",
                        ">= 1.6x",
                        verdict(ratio >= TARGETS["b_scaling"]),
                        "",
                    )
                )
        if "c" in r:
            c = r["c"]["first_call_ms"]
            rows.append(
                (
                    f"(c) approval -> first connector call, {r['c']['requests']} requests",
                    f"p50 {c['p50']} ms, p95 {c['p95']} ms, max {c['max']} ms",
                    "p50 < 200 ms",
                    verdict(c["p50"] < TARGETS["c_p50_ms"]),
                    f"{r['c']['cpu_pct_of_one_core']['other']}%",
                )
            )
        print()
        print(f"## Connector fan-out, PostgreSQL, {os.cpu_count()} cores")
        print()
        print("| measure | figure | target | verdict | other CPU |")
        print("|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        if "b" in r:
            print()
            print(
                "| (b) run | processes | calls | calls/s first->last | calls/s thaw->done "
                "| first call ms | all completed s | queue empty s | CPU (% of a core) |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            for i, run in enumerate(r["b"]):
                cpu = run["cpu_pct_of_one_core"]
                shown = ", ".join(
                    f"{k} {v}" for k, v in cpu.items() if k == "other" or (k != "loadgen" and v)
                )
                print(
                    f"| {i + 1} | {run['processes']} | {run['calls']} | "
                    f"{run['calls_per_s_first_to_last_call']} | "
                    f"{run['calls_per_s_thaw_to_all_completed']} | "
                    f"{run['first_call_after_thaw_ms']} | {run['all_completed_s']} | "
                    f"{run['queue_empty_s']} | {shown} |"
                )
        print(
            "\n(other CPU: what other processes on the machine used during the phase, in percent"
            "\nof one core; high values mean noisy figures)"
        )
        path.write_text(json.dumps(self.results, indent=2))  # with the ratio computed above
        print(f"\nfull results: {path}")


def cpu_ms_per_call(before: dict[str, Any], after: dict[str, Any], calls: int) -> dict[str, float]:
    """CPU milliseconds per connector call by process group (the workers', PostgreSQL's...):
    unlike calls/s, this does not depend on what else the shared machine is running."""
    used: dict[str, float] = {}
    for group, pids in after.items():
        if group in ("machine", "loadgen"):
            continue
        spent = sum(cpu - before.get(group, {}).get(pid, 0.0) for pid, cpu in pids.items())
        used[group] = round(1000 * spent / max(1, calls), 2)
    used["workers"] = round(sum(v for k, v in used.items() if k.startswith("worker")), 2)
    return used


def worker_problems(workers: list[Any], limit: int = 5) -> list[str]:
    """The first error and warning lines of the workers' logs (JSON lines), shortened."""
    found: list[str] = []
    for worker in workers:
        with contextlib.suppress(OSError):
            for line in worker.logfile.read_text(errors="replace").splitlines():
                if '"level": "error"' in line or '"level": "warning"' in line:
                    found.append(f"{worker.name}: {line[:400]}")
                    if len(found) >= limit:
                        return found
    return found


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(pct(values, 50), 1),
        "p95": round(pct(values, 95), 1),
        "max": round(max(values), 1),
        "mean": round(statistics.mean(values), 1),
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--phases", default="a,b,c", help="comma-separated subset of a,b,c (default all)"
    )
    parser.add_argument(
        "--type",
        choices=("access", "erasure", "restriction", "portability", "objection"),
        default="access",
        help="request type (access and portability complete once their package is assembled)",
    )
    parser.add_argument("--a-connectors", type=int, default=100)
    parser.add_argument("--a-delay-ms", type=int, default=100)
    parser.add_argument("--a-repeats", type=int, default=5, help="measured runs after a warm-up")
    parser.add_argument("--b-connectors", type=int, default=10, help="connectors in (b) and (c)")
    parser.add_argument("--b-requests", type=int, default=300, help="requests per (b) run")
    parser.add_argument(
        "--b-processes",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker process counts, one (b) run each, in this order (default 1 2)",
    )
    parser.add_argument("--b-timeout", type=float, default=180, help="seconds per (b) run")
    parser.add_argument("--c-requests", type=int, default=50)
    parser.add_argument("--c-warmup", type=int, default=3)
    parser.add_argument(
        "--gap", type=float, default=0.5, help="idle seconds before each (a)/(c) approval"
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=0,
        help="DSR_WORKER_CONCURRENCY for the workers (default: the service's default)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="before each phase, wait up to this many seconds for other load to stop",
    )
    parser.add_argument("--quiet-cpu", type=float, default=25)
    parser.add_argument(
        "--worker-cpu",
        type=float,
        metavar="CORES",
        help="(b) only: hold each worker process to this many cores (a cgroup CPU quota, "
        "e.g. 0.5), as if each ran on a small host of its own; needs root (bench/cpuquota.py)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the workers during (b) (adds overhead)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument(
        "--app-source",
        type=Path,
        help="run the service from this source tree (first on PYTHONPATH of every process)",
    )
    parser.add_argument("--serve-connectors", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.phases = set(args.phases.split(","))
    if not args.phases or args.phases - {"a", "b", "c"}:
        parser.error("--phases takes a comma-separated subset of a,b,c")
    if not (
        1 <= args.a_connectors <= 1000
        and 0 <= args.a_delay_ms <= 10_000
        and 1 <= args.a_repeats <= 100
        and 1 <= args.b_connectors <= 100
        and 1 <= args.b_requests <= 5000
        and all(1 <= k <= 4 for k in args.b_processes)
        and len(args.b_processes) <= 6
        and 1 <= args.c_requests <= 1000
        and args.b_timeout <= 900
        and (args.worker_cpu is None or 0.05 <= args.worker_cpu <= 4)
    ):
        parser.error(
            "bounds: a-connectors 1..1000, a-delay-ms <= 10000, a-repeats 1..100, "
            "b-connectors 1..100, b-requests 1..5000, b-processes 1..4 (at most 6 runs), "
            "c-requests 1..1000, b-timeout <= 900, worker-cpu 0.05..4"
        )
    return args


def main() -> None:
    args = parse_args()
    if args.serve_connectors:
        serve_connectors(args.serve_connectors)
        return
    if args.app_source is not None:
        source = str(args.app_source.resolve())
        sys.path.insert(0, source)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (source, os.environ.get("PYTHONPATH")) if p
        )
    bench = FanoutBench(args)
    atexit.register(bench.stop_all)  # a last resort: children never outlive the bench
    import uvloop

    uvloop.run(bench.run())


if __name__ == "__main__":
    main()
