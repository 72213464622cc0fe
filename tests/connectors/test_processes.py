"""Workers as real processes: two ``dsr worker`` processes never run the same job at once,
and a worker killed with SIGKILL in the middle of a fan-out loses nothing.

The API runs in the test process (its worker off); the connectors are real servers on
loopback that count, per ``Idempotency-Key``, how many calls are in flight at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from app.kit.clock import FrozenClock
from tests.conftest import Service
from tests.connectors.conftest import register
from tests.fixtures.connectors import ConnectorFarm, answers

# Worker processes beside the API, each with a connection pool: these tests run one after the
# other on one xdist worker, so that two of them never share the machine or PostgreSQL's
# connections at once.
pytestmark = pytest.mark.xdist_group("worker-processes")

REQUESTS = 100  # the kill test: "a fan-out of 100 requests"
CONCURRENT_REQUESTS = 60  # x 3 connectors: enough overlap for two workers to collide
LEASE_SECONDS = 2


@pytest.fixture
def clock() -> FrozenClock:
    # The worker processes read the real clock; the API must agree with them.
    return FrozenClock(datetime.now(UTC))


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"worker_lease_seconds": LEASE_SECONDS, "worker_poll_seconds": 0.2}


def _env(service: Service, *, lease: float = LEASE_SECONDS) -> dict[str, str]:
    s = service.settings
    return {
        **os.environ,
        "DSR_ENV": "test",
        "DSR_DATABASE_URL": s.database_url,
        "DSR_DATA_DIR": str(s.data_dir),
        "DSR_ENCRYPTION_KEY": s.encryption_key,
        "DSR_STAFF_JWT_SECRET": s.staff_jwt_secret,
        "DSR_PUBLIC_URL": s.public_url,
        "DSR_WORKER_LEASE_SECONDS": str(lease),
        "DSR_WORKER_POLL_SECONDS": "0.2",
        "DSR_RETRY_BASE_SECONDS": "0.05",
        "DSR_RETRY_CAP_SECONDS": "0.2",
    }


@contextlib.contextmanager
def workers(
    service: Service, count: int, *, lease: float = LEASE_SECONDS
) -> Iterator[list[subprocess.Popen[bytes]]]:
    # Logs go to a file: a pipe nobody reads would fill up and block the worker mid-write.
    service.settings.data_dir.mkdir(parents=True, exist_ok=True)
    log = (service.settings.data_dir / "workers.log").open("ab")
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--concurrency", "8"],
            env=_env(service, lease=lease),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for _ in range(count)
    ]
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.terminate()
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


async def _file_approved(service: Service, count: int) -> list[str]:
    ids = []
    for n in range(count):
        answer = await service.client.post(
            "/v1/admin/requests",
            json={
                "type": "access",
                "subject": {"email": f"person{n}@example.org"},
                "channel": "email",
                "received_at": service.clock.now().isoformat(),
                "identity_verified": True,
            },
            headers=service.staff("requests:write"),
        )
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids


async def _scalar(service: Service, sql: str) -> int:
    async with service.runtime.sessions() as session:
        return int((await session.exec(text(sql))).one()[0])  # type: ignore[call-overload]


async def _wait_completed(
    service: Service, expected: int, *, seconds: float, alive: list[subprocess.Popen[bytes]]
) -> int:
    deadline = time.monotonic() + seconds
    done = 0
    while time.monotonic() < deadline:
        done = await _scalar(service, "SELECT count(*) FROM dsr_request WHERE status='completed'")
        if done == expected:
            return done
        for process in alive:
            assert process.poll() is None, _log_tail(service)
        await asyncio.sleep(0.1)
    return done


def _log_tail(service: Service) -> str:
    return (service.settings.data_dir / "workers.log").read_text(errors="replace")[-3000:]


async def _nothing_left_waiting(service: Service) -> None:
    assert (
        await _scalar(service, "SELECT count(*) FROM connector_job WHERE status <> 'succeeded'")
        == 0
    )
    stranded = await _scalar(
        service,
        "SELECT count(*) FROM job WHERE status IN ('queued', 'running') "
        "AND kind IN ('connectors.call', 'requests.fan_out')",
    )
    assert stranded == 0


async def test_two_workers_never_run_the_same_job_at_once(
    service: Service, farm: ConnectorFarm
) -> None:
    for name in ("shop", "crm", "billing"):
        await register(service, farm, name, answers(delay=0.01))
    ids = await _file_approved(service, CONCURRENT_REQUESTS)
    # A lease long enough that no heartbeat delayed by a busy machine lets a job be taken
    # again (a re-run is by design after a crash; here every worker stays alive).
    with workers(service, 2, lease=60) as running:
        done = await _wait_completed(service, len(ids), seconds=90, alive=running)
    assert done == CONCURRENT_REQUESTS
    keys = {c.idempotency_key for c in farm.calls}
    assert len(keys) == 3 * CONCURRENT_REQUESTS
    assert max(farm.max_in_flight.values()) == 1
    assert len(farm.calls) == len(keys), "a job that answered at once was called twice"
    assert all(c.signature_valid for c in farm.calls)
    await _nothing_left_waiting(service)


async def test_a_worker_killed_mid_fan_out_loses_nothing(
    service: Service, farm: ConnectorFarm
) -> None:
    for name in ("shop", "crm"):
        await register(service, farm, name, answers(delay=0.05))
    ids = await _file_approved(service, REQUESTS)
    with workers(service, 1) as (victim,):
        deadline = time.monotonic() + 60
        while len(farm.calls) < 40 and time.monotonic() < deadline:
            assert victim.poll() is None
            await asyncio.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    calls_at_kill = len(farm.calls)
    assert 0 < calls_at_kill < 2 * REQUESTS, "the kill must land in the middle of the fan-out"
    assert await _scalar(service, "SELECT count(*) FROM job WHERE status = 'running'") > 0

    with workers(service, 1) as running:
        done = await _wait_completed(service, len(ids), seconds=90, alive=running)
    assert done == REQUESTS
    assert max(farm.max_in_flight.values()) == 1, "a job ran twice at the same time"
    assert {c.idempotency_key for c in farm.calls} == set(await _keys(service))
    await _nothing_left_waiting(service)


async def _keys(service: Service) -> list[str]:
    async with service.runtime.sessions() as session:
        rows = await session.exec(text("SELECT id FROM connector_job"))  # type: ignore[call-overload]
        return [row[0] for row in rows.all()]
