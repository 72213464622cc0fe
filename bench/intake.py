"""Intake and staff-read benchmark of the DSR service, with a thin-endpoint reference.

One command runs everything against a throwaway database (created and dropped here)::

    .venv/bin/python bench/intake.py --db postgresql --requests 100000
    .venv/bin/python bench/intake.py --db sqlite --requests 100000

Steps: create the database, ``dsr migrate``, seed ``--requests`` stored requests in-process
through the service's own intake code (see ``seed.py``), then for each ``--workers`` value:

1. start ``dsr serve --workers N`` (``DSR_WORKER=off``) and one ``dsr worker`` process;
2. intake: ``POST /v1/requests`` with varied bodies and distinct e-mails from ``--clients``
   closed-loop keep-alive clients, ``--warmup`` s unmeasured then ``--duration`` s measured;
3. wait (bounded) until the worker has delivered the e-mails the intake queued;
4. staff detail: ``GET /v1/admin/requests/{id}`` on random seeded ids, staff bearer token;
5. stop both, start the thin reference app (``thin_app.py``, uvicorn, same worker count)
   and measure it like step 2.

Every loop is bounded in time or count; only loopback addresses are used. Results are
printed as a Markdown table and written to ``bench/out/`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bodies import body_bytes  # noqa: E402
from loadgen import PhaseResult, RequestFactory, run_phase  # noqa: E402

if TYPE_CHECKING:
    from app.config import Settings

HOST = "127.0.0.1"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
STAFF_SECRET = "bench-staff-secret-" + "s" * 40
TARGETS = {"intake_rps": 600.0, "intake_p99_ms": 150.0, "detail_p99_ms": 50.0}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- CPU accounting from /proc (read only) ---------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[str, int, float, float] | None:
    """(command, parent pid, CPU seconds, CPU seconds of its exited children)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    own = (int(fields[11]) + int(fields[12])) / _TICK
    children = (int(fields[13]) + int(fields[14])) / _TICK
    return comm, int(fields[1]), own, children


def _all_procs() -> dict[int, tuple[str, int, float, float]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                out[int(entry)] = stat
    return out


def _tree(procs: dict[int, tuple[str, int, float, float]], root: int) -> set[int]:
    members, changed = {root}, True
    while changed:
        changed = False
        for pid, (_, ppid, _, _) in procs.items():
            if ppid in members and pid not in members:
                members.add(pid)
                changed = True
    return members & set(procs)


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


def _ours_in_postgres(pid: int, database: str | None) -> bool:
    """A backend of the bench database, or one of PostgreSQL's own background processes (not
    another session's backend)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    if database and database in title:
        return True
    return "(" not in title and "[local]" not in title


def cpu_snapshot(groups: dict[str, int], database: str | None = None) -> dict[str, Any]:
    """Per-process CPU seconds so far, by group: each process tree (by root pid, plus its
    reaped children under the key -root), PostgreSQL (the bench database's backends, the
    server's background processes and its reaped backends), this process, and the whole
    machine."""
    procs = _all_procs()
    snap: dict[str, Any] = {}
    for name, root in groups.items():
        members = _tree(procs, root)
        snap[name] = {pid: procs[pid][2] for pid in members}
        if root in procs:  # children that exited (and were reaped) during the phase
            snap[name][-root] = procs[root][3]
    snap["postgres"] = {
        pid: cpu
        for pid, (comm, _, cpu, _) in procs.items()
        if comm == "postgres" and _ours_in_postgres(pid, database)
    }
    # backends that exit (pool churn) are reaped by the postmaster: their CPU shows up in its
    # children's time (any database's backends, so a little of other sessions' too)
    for pid, (comm, ppid, _, children) in procs.items():
        if comm == "postgres" and procs.get(ppid, ("",))[0] != "postgres":
            snap["postgres"][-pid] = children
    snap["loadgen"] = {os.getpid(): time.process_time()}
    snap["machine"] = _machine_busy()
    return snap


def cpu_share(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, int]:
    """Percent of one core used by each group over the phase (200 = both cores)."""
    share = {}
    for group, pids in after.items():
        if group == "machine":
            continue
        used = sum(cpu - before.get(group, {}).get(pid, 0.0) for pid, cpu in pids.items())
        share[group] = round(100 * used / seconds)
    (busy0, total0), (busy1, total1) = before["machine"], after["machine"]
    cores = os.cpu_count() or 1
    share["machine"] = round(100 * cores * (busy1 - busy0) / max(1.0, total1 - total0))
    # anything else on the machine (other users' tests...): the figures are noisy if high
    share["other"] = max(0, share["machine"] - sum(v for k, v in share.items() if k != "machine"))
    return share


async def wait_until_quiet(limit_pct: float, timeout: float) -> float:
    """Wait (at most ``timeout`` s) until the machine's CPU use over one second is below
    ``limit_pct`` (of one core); return the last reading."""
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + timeout
    while True:
        busy0, total0 = _machine_busy()
        await asyncio.sleep(1)
        busy1, total1 = _machine_busy()
        busy = 100 * cores * (busy1 - busy0) / max(1.0, total1 - total0)
        if busy < limit_pct or time.monotonic() >= deadline:
            return busy


# --- processes ---------------------------------------------------------------------------------


class Proc:
    """A child process in its own session (so it and its children can be stopped by id)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logfile: Path) -> None:
        self.name = name
        self.logfile = logfile
        self._log = logfile.open("ab")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=logfile.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()


async def wait_healthy(port: int, proc: Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise SystemExit(f"{proc.name} exited; see {proc.logfile}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise SystemExit(f"{proc.name} did not answer /healthz within {timeout} s")


# --- the database ------------------------------------------------------------------------------


class Database:
    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.name = f"dsr_bench_{os.getpid()}_{secrets.token_hex(3)}"
        if kind == "postgresql":
            self.url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        else:
            self.url = f"sqlite:///{workdir / 'dsr.db'}"

    async def create(self) -> None:
        if self.kind == "postgresql":
            import asyncpg

            conn = await asyncpg.connect(PG_ADMIN_DSN)
            try:
                await conn.execute(f'CREATE DATABASE "{self.name}"')
            finally:
                await conn.close()

    async def drop(self) -> None:
        if self.kind == "postgresql":
            import asyncpg

            conn = await asyncpg.connect(PG_ADMIN_DSN)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await conn.close()

    async def scalar(self, sql: str) -> Any:
        from sqlalchemy import text

        from app.db import create_engine

        engine = create_engine(self.url)
        try:
            async with engine.connect() as conn:
                return (await conn.execute(text(sql))).scalar()
        finally:
            await engine.dispose()


class PgWaitSampler:
    """Samples pg_stat_activity of the bench database every ``interval`` s: what the server's
    connections are doing (running, idle in transaction, waiting on a lock...)."""

    def __init__(self, db: Database, interval: float = 0.1) -> None:
        self.db, self.interval = db, interval
        self.samples = 0
        self.sessions_opened = 0
        self.commits = 0
        self.rollbacks = 0
        self.tally: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PgWaitSampler:
        if self.db.kind == "postgresql":
            self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        try:
            await self._sample()
        except Exception as exc:  # the sampler is an aid; never fail the run for it
            log(f"pg_stat_activity sampler stopped: {exc!r}")

    async def _sample(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.db.url)
        counters = (
            "SELECT sessions, xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1"
        )
        try:
            before = await conn.fetchrow(counters, self.db.name)
            while not self._stop.is_set():
                rows = await conn.fetch(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = "
                    "'client backend'",
                    self.db.name,
                )
                self.samples += 1
                for row in rows:
                    what = row["state"] or "?"
                    if row["wait_event_type"]:
                        what += f" / {row['wait_event_type']}:{row['wait_event']}"
                    self.tally[what] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)
            await asyncio.sleep(1.5)  # backends report their statistics about once a second
            after = await conn.fetchrow(counters, self.db.name)
            self.sessions_opened = after["sessions"] - before["sessions"]
            self.commits = after["xact_commit"] - before["xact_commit"]
            self.rollbacks = after["xact_rollback"] - before["xact_rollback"]
        finally:
            await conn.close()

    def summary(self) -> dict[str, float]:
        """Average number of server connections in each state/wait, over the samples."""
        if not self.samples:
            return {}
        return {k: round(v / self.samples, 1) for k, v in self.tally.most_common(8)}


# --- the benchmark -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = secrets.token_hex(3)
        self.next_n = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="dsr-bench-"))
        self.db = Database(args.db, self.workdir)
        self.data_dir = self.workdir / "var"
        self.data_dir.mkdir()
        from app.config import new_key

        self.encryption_key = new_key()
        self.seeded_ids: list[str] = []
        self.results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "db": args.db,
            "argv": sys.argv,
            "clients": args.clients,
            "client": args.client,
            "seeded": args.requests,
            "runs": [],
        }

    # environment shared by the server, the worker and the seeder
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSR_")}
        env.update(
            DSR_ENV="development",
            DSR_DATABASE_URL=self.db.url,
            DSR_DATA_DIR=str(self.data_dir),
            DSR_ENCRYPTION_KEY=self.encryption_key,
            DSR_STAFF_JWT_SECRET=STAFF_SECRET,
            DSR_WORKER="off",
            DSR_PUBLIC_URL="http://127.0.0.1:8000",
        )
        return env

    def settings(self) -> Settings:
        from app.config import Settings

        return Settings(
            env="development",
            database_url=self.db.url,
            data_dir=self.data_dir,
            encryption_key=self.encryption_key,
            staff_jwt_secret=STAFF_SECRET,
            worker="off",
        )

    def dsr(self) -> str:
        return str(Path(sys.executable).with_name("dsr"))

    async def run(self) -> None:
        import app

        self.results["app_source"] = str(Path(app.__file__).parent)
        log(f"service code from {self.results['app_source']}")
        log(f"work dir {self.workdir}; database {self.db.url}")
        await self.db.create()
        try:
            subprocess.run([self.dsr(), "migrate"], env=self.env(), check=True, cwd=self.workdir)
            await self.prepare_thin_table()
            if self.args.phases & {"intake", "detail"}:
                await self.seed()
            for workers in self.args.workers:
                await self.one_configuration(workers)
        finally:
            await self.db.drop()
            if not self.args.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
        self.report()

    async def prepare_thin_table(self) -> None:
        import thin_app

        engine = thin_app._engine(self.db.url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(thin_app.metadata.create_all)
        finally:
            await engine.dispose()

    async def seed(self) -> None:
        from seed import seed

        count = self.args.requests
        log(f"seeding {count} requests in-process (service.create_request, batches of 1000)")

        def progress(done: int, seconds: float) -> None:
            if done % 10000 == 0 or done == count:
                log(f"  seeded {done} ({done / seconds:.0f}/s)")

        started = time.perf_counter()
        self.seeded_ids = await seed(self.settings(), count, tag=self.tag, progress=progress)
        self.next_n = count
        seconds = time.perf_counter() - started
        self.results["seed_seconds"] = round(seconds, 1)
        log(f"seeded {count} requests in {seconds:.1f} s")
        await self.settle()

    async def settle(self) -> None:
        """Leave no maintenance work for the measured phases: vacuum and analyse what the
        seeding wrote (autovacuum would do it during the first phase otherwise) or
        checkpoint SQLite's WAL."""
        started = time.perf_counter()
        if self.db.kind == "postgresql":
            import asyncpg

            conn = await asyncpg.connect(self.db.url)
            try:
                await conn.execute("VACUUM (ANALYZE)")
            finally:
                await conn.close()
        else:
            import sqlite3

            with contextlib.closing(sqlite3.connect(self.db.url.removeprefix("sqlite:///"))) as c:
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log(f"vacuumed/checkpointed the database in {time.perf_counter() - started:.1f} s")

    def intake_factory(self, tag: str) -> RequestFactory:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}

        def factory(n: int) -> tuple[str, str, dict[str, str], bytes]:
            return "POST", "/v1/requests", headers, body_bytes(n, tag)

        return factory

    def detail_factory(self) -> RequestFactory:
        from app.security.staff import mint_staff_token

        token = mint_staff_token(
            secret=STAFF_SECRET, subject="bench", scopes=["requests:read"], ttl_seconds=7200
        )
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        ids, rng = self.seeded_ids, random.Random(7)

        def factory(_: int) -> tuple[str, str, dict[str, str], bytes]:
            return "GET", f"/v1/admin/requests/{ids[rng.randrange(len(ids))]}", headers, b""

        return factory

    async def measure(
        self,
        name: str,
        port: int,
        factory: RequestFactory,
        *,
        duration: float,
        cpu_groups: dict[str, int],
        pg: bool = True,
        profile_pid: int | None = None,
    ) -> dict[str, Any]:
        args = self.args
        if args.quiet_wait > 0:
            busy = await wait_until_quiet(args.quiet_cpu, args.quiet_wait)
            if busy >= args.quiet_cpu:
                log(f"machine still busy ({busy:.0f}% of a core) before {name}: figures noisy")
        await run_phase(
            f"{name} warm-up",
            host=HOST,
            port=port,
            factory=factory,
            concurrency=args.clients,
            duration=args.warmup,
            start_at=self.next_n,
            client=args.client,
        )
        self.next_n += 10**6  # warm-up requests never exceed this: bodies stay distinct
        profiler = None
        if profile_pid is not None:
            out = BENCH_DIR / "out" / f"pyspy-{self.args.db}-{name.replace(' ', '_')}.txt"
            out.parent.mkdir(exist_ok=True)
            profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(profile_pid),
                    "--subprocesses",
                    "--nonblocking",
                    "--gil",
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--duration",
                    str(int(duration)),
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        before = cpu_snapshot(cpu_groups, self.db.name if self.db.kind == "postgresql" else None)
        async with PgWaitSampler(self.db) if pg else contextlib.nullcontext() as sampler:
            result: PhaseResult = await run_phase(
                name,
                host=HOST,
                port=port,
                factory=factory,
                concurrency=args.clients,
                duration=duration,
                start_at=self.next_n,
                client=args.client,
            )
        after = cpu_snapshot(cpu_groups, self.db.name if self.db.kind == "postgresql" else None)
        if profiler is not None:
            profiler.wait(60)
        self.next_n = result.next_n + 1
        summary = result.summary()
        summary["cpu_pct_of_one_core"] = cpu_share(before, after, result.seconds)
        if sampler is not None and sampler.samples:
            summary["pg_connections"] = sampler.summary()
            summary["pg_sessions_opened"] = sampler.sessions_opened
            summary["pg_commits_per_request"] = round(sampler.commits / max(1, result.count), 2)
            summary["pg_rollbacks_per_request"] = round(sampler.rollbacks / max(1, result.count), 2)
        log(
            f"{name}: {summary['req_per_s']} req/s, p50 {summary['p50_ms']} ms, "
            f"p95 {summary['p95_ms']} ms, p99 {summary['p99_ms']} ms, "
            f"statuses {summary['statuses']}, errors {summary['errors']}, "
            f"CPU {summary['cpu_pct_of_one_core']}"
        )
        if "pg_connections" in summary:
            log(f"  pg_stat_activity (avg connections): {summary['pg_connections']}")
            log(
                f"  PostgreSQL during the phase: {summary['pg_sessions_opened']} sessions "
                f"opened; per request {summary['pg_commits_per_request']} commits, "
                f"{summary['pg_rollbacks_per_request']} rollbacks"
            )
        return summary

    async def queued_mail(self) -> int:
        return int(
            await self.db.scalar(
                "SELECT count(*) FROM job WHERE status IN ('queued', 'running') "
                "AND kind = 'notifications.deliver'"
            )
        )

    async def one_configuration(self, workers: int) -> None:
        args = self.args
        run: dict[str, Any] = {"workers": workers}
        if args.phases == {"thin"}:
            run["thin"] = await self.thin(workers)
            self.results["runs"].append(run)
            return
        port = free_port()
        env = self.env()
        log(f"--- --workers {workers}: dsr serve on port {port}, worker: {args.job_worker}")
        server = Proc(
            f"dsr serve w{workers}",
            [self.dsr(), "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)],
            env,
            self.workdir / f"serve-w{workers}.log",
        )
        job_worker = None
        try:
            if args.job_worker == "on":
                job_worker = Proc("dsr worker", [self.dsr(), "worker"], env, self.workdir / "w.log")
            await wait_healthy(port, server)
            groups = {"server": server.pid}
            if job_worker is not None:
                groups["worker"] = job_worker.pid
            if "intake" in args.phases:
                run["intake"] = await self.measure(
                    "intake",
                    port,
                    self.intake_factory(self.tag),
                    duration=args.duration,
                    cpu_groups=groups,
                    profile_pid=server.pid if args.profile else None,
                )
            backlog = await self.queued_mail()
            run["mail_backlog_after_intake"] = backlog
            if job_worker is not None:
                started, first = time.monotonic(), backlog
                while backlog and time.monotonic() - started < args.drain_timeout:
                    await asyncio.sleep(1)
                    backlog = await self.queued_mail()
                seconds = time.monotonic() - started
                run["mail_backlog_left"] = backlog
                run["mail_delivered_per_s"] = round((first - backlog) / max(seconds, 1e-3), 1)
                log(
                    f"mail jobs queued after intake: {first}; the worker delivered "
                    f"{first - backlog} in {seconds:.1f} s "
                    f"({run['mail_delivered_per_s']}/s); {backlog} left"
                )
            else:
                log(f"mail jobs queued after intake: {backlog} (no worker)")
            run["rows_at_detail"] = int(await self.db.scalar("SELECT count(*) FROM dsr_request"))
            if "detail" in args.phases:
                run["detail"] = await self.measure(
                    "staff detail",
                    port,
                    self.detail_factory(),
                    duration=args.detail_duration,
                    cpu_groups=groups,
                    profile_pid=server.pid if args.profile else None,
                )
        finally:
            server.stop()
            if job_worker is not None:
                job_worker.stop()
        if "thin" in args.phases:
            run["thin"] = await self.thin(workers)
        self.results["runs"].append(run)

    async def thin(self, workers: int) -> dict[str, Any]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSR_")}
        env["BENCH_THIN_DATABASE_URL"] = self.db.url
        if workers > 1 and self.serves_with_reuse_port():
            # Served as ``dsr serve --workers N`` serves the service: a socket per process.
            paths = [str(BENCH_DIR), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
            command = [
                sys.executable,
                "-c",
                "from app.serving import serve; "
                f"serve({HOST!r}, {port}, {workers}, app='thin_app:create_app')",
            ]
            how = "app.serving (a socket per process)"
        else:
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "thin_app:create_app",
                "--factory",
                "--app-dir",
                str(BENCH_DIR),
                "--host",
                HOST,
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
            how = f"uvicorn --workers {workers}"
        log(f"thin reference app, {how}, port {port}")
        proc = Proc(f"thin w{workers}", command, env, self.workdir / f"thin-w{workers}.log")
        try:
            await wait_healthy(port, proc)
            return await self.measure(
                "thin intake",
                port,
                self.intake_factory(self.tag + "t"),
                duration=self.args.duration,
                cpu_groups={"server": proc.pid},
            )
        finally:
            proc.stop()

    def serves_with_reuse_port(self) -> bool:
        """Whether the service under test has ``app.serving`` (older snapshots, run with
        ``--app-source``, serve through uvicorn's shared socket)."""
        try:
            from app.serving import has_reuse_port
        except ImportError:
            return False
        return has_reuse_port()

    def report(self) -> None:
        out = BENCH_DIR / "out"
        out.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = out / f"{self.args.db}-{stamp}.json"
        path.write_text(json.dumps(self.results, indent=2))
        print()
        print(f"## {self.args.db}: {self.args.requests} seeded, {self.args.clients} clients")
        print()
        print(
            "| server workers | intake req/s | p50 | p95 | p99 | other CPU | detail p50 | p95 "
            "| p99 | other CPU | thin req/s | thin p50 | thin p99 | other CPU |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for run in self.results["runs"]:
            cells = [str(run["workers"])]
            for phase, keys in (
                ("intake", ("req_per_s", "p50_ms", "p95_ms", "p99_ms")),
                ("detail", ("p50_ms", "p95_ms", "p99_ms")),
                ("thin", ("req_per_s", "p50_ms", "p99_ms")),
            ):
                figures = run.get(phase) or {}
                cells += [str(figures.get(key, "-")) for key in keys]
                other = figures.get("cpu_pct_of_one_core", {}).get("other")
                cells.append("-" if other is None else f"{other}%")
            print("| " + " | ".join(cells) + " |")
        print("\n(latencies in ms; 'other CPU': what other processes on the machine used during")
        print("the phase, in percent of one core; high values mean noisy figures)\n")
        for run in self.results["runs"]:
            i, d = run.get("intake"), run.get("detail")
            verdicts = []
            if i:
                verdicts.append(("intake >= 600/s", i["req_per_s"] >= TARGETS["intake_rps"]))
                verdicts.append(("intake p99 < 150 ms", i["p99_ms"] < TARGETS["intake_p99_ms"]))
            if d:
                verdicts.append(("detail p99 < 50 ms", d["p99_ms"] < TARGETS["detail_p99_ms"]))
            text = ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in verdicts)
            if text:
                print(f"- workers {run['workers']}: {text}")
        print(f"\nfull results: {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--requests", type=int, default=100_000, help="stored requests to seed (default 100000)"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="server process counts to try"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=20, help="measured intake seconds")
    parser.add_argument("--detail-duration", type=float, default=15, help="measured GET seconds")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds per phase")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument(
        "--job-worker",
        choices=("on", "off"),
        default="on",
        help="run one `dsr worker` process beside the server (default on)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=15,
        help="seconds to watch the worker deliver the intake's e-mails before the GET phase",
    )
    parser.add_argument(
        "--phases",
        default="intake,detail,thin",
        help="comma-separated subset of intake,detail,thin to run (default: all three)",
    )
    parser.add_argument("--skip-thin", action="store_true", help="same as leaving thin out")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="before each phase, wait up to this many seconds for other load to stop",
    )
    parser.add_argument(
        "--quiet-cpu",
        type=float,
        default=25,
        help="machine CPU (percent of one core) under which it counts as quiet",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server (figures then include overhead)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument(
        "--app-source",
        type=Path,
        help="run the service from this source tree (e.g. a `git archive HEAD` snapshot) "
        "instead of the installed package; put first on PYTHONPATH for every process",
    )
    args = parser.parse_args(argv)
    args.phases = set(args.phases.split(","))
    if args.skip_thin:
        args.phases.discard("thin")
    if not args.phases or args.phases - {"intake", "detail", "thin"}:
        parser.error("--phases takes a comma-separated subset of intake,detail,thin")
    if "detail" in args.phases and args.requests < 1:
        parser.error("the detail phase reads seeded requests: --requests must be at least 1")
    if not 1 <= args.clients <= 256 or args.duration > 600 or args.requests > 1_000_000:
        parser.error("bounds: 1..256 clients, duration <= 600 s, requests <= 1,000,000")
    return args


def main() -> None:
    args = parse_args()
    if args.app_source is not None:
        source = str(args.app_source.resolve())
        sys.path.insert(0, source)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (source, os.environ.get("PYTHONPATH")) if p
        )
    try:
        import uvloop
    except ImportError:
        asyncio.run(Bench(args).run())
    else:
        uvloop.run(Bench(args).run())


if __name__ == "__main__":
    main()
