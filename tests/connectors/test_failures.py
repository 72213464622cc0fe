"""Connectors that fail: too slow, unreachable, rate limiting, never calling back, and
requests withdrawn while their jobs wait."""

from __future__ import annotations

from datetime import timedelta

import pytest
from starlette.responses import JSONResponse, Response

from app.connectors.models import ConnectorJob
from app.jobs.models import Job
from app.jobs.retry import backoff_ceiling
from app.kit.clock import utc
from tests.conftest import Service, bearer
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import Call, ConnectorFarm, answers, silent
from tests.fixtures.mail import free_port


async def _engine_job(service: Service, connector_job_id: str) -> Job:
    async with service.runtime.sessions() as session:
        cj = await session.get(ConnectorJob, connector_job_id)
        assert cj is not None
        assert cj.engine_job_id is not None
        job = await session.get(Job, cj.engine_job_id)
        assert job is not None
        return job


async def test_a_connector_slower_than_its_timeout_is_retried(
    service: Service, farm: ConnectorFarm
) -> None:
    slow_then_fast: list[float] = [1.0]

    async def behave(f: ConnectorFarm, call: Call) -> Response:
        return await answers(delay=slow_then_fast.pop() if slow_then_fast else 0)(f, call)

    await register(service, farm, "slow", behave, timeout_s=0.2)
    filed = await service.file_verified()
    await drive(service, farm)
    view = await detail(service, filed["id"])
    assert view["status"] == "completed"
    assert view["jobs"][0]["attempts"] == 2
    retry = next(e for e in view["events"] if e["action"] == "connector_job.retry_scheduled")
    assert retry["details"]["error"] == "no answer within 0.2 s"


async def test_an_unreachable_connector_fails_after_its_attempts(
    service: Service, farm: ConnectorFarm
) -> None:
    created = await register(service, farm, "gone", answers(), max_attempts=3)
    patched = await service.client.patch(
        f"/v1/admin/connectors/{created['id']}",
        json={"url": f"http://127.0.0.1:{free_port()}/gone"},
        headers=service.staff("connectors:write"),
    )
    assert patched.status_code == 200, patched.text
    filed = await service.file_verified()
    await drive(service, farm)
    view = await detail(service, filed["id"])
    assert view["status"] == "action_required"
    job = view["jobs"][0]
    assert (job["status"], job["attempts"]) == ("failed", 3)
    assert job["last_error"].startswith("gave up after 3 attempts: connection failed")
    subject = await service.client.get(
        f"/v1/requests/{filed['id']}", headers=bearer(filed["status_token"])
    )
    assert subject.json()["status"] == "action_required"
    assert "127.0.0.1" not in subject.text, "no connector internals for the subject"


@pytest.mark.parametrize(
    "settings_overrides", [{"retry_base_seconds": 0.01, "retry_cap_seconds": 600}]
)
async def test_retry_after_is_honoured(service: Service, farm: ConnectorFarm) -> None:
    async def busy(f: ConnectorFarm, call: Call) -> Response:
        return JSONResponse(
            {"detail": "slow down"}, status_code=429, headers={"Retry-After": "120"}
        )

    await register(service, farm, "busy", busy)
    filed = await service.file_verified()
    await service.run_jobs()
    job = (await detail(service, filed["id"]))["jobs"][0]
    assert (job["status"], job["last_error"]) == ("queued", "HTTP 429: slow down")
    engine = await _engine_job(service, job["id"])
    waits = utc(engine.run_after) - service.clock.now()
    assert (
        timedelta(seconds=120)
        <= waits
        <= timedelta(seconds=120 + backoff_ceiling(1, base=0.01, cap=600))
    )
    assert engine.status == "queued"


@pytest.mark.parametrize(
    "settings_overrides",
    [{"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05, "callback_timeout_seconds": 30}],
)
async def test_no_callback_in_time_calls_again_with_the_same_key(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "batch", silent(), max_attempts=2)
    filed = await service.file_verified()
    await service.run_jobs()
    job = (await detail(service, filed["id"]))["jobs"][0]
    assert job["status"] == "waiting_callback"
    assert len(farm.calls) == 1
    service.clock.advance(seconds=29)
    await service.run_jobs()
    assert len(farm.calls) == 1, "not before the callback timeout"
    service.clock.advance(seconds=2)
    await service.run_jobs()
    assert [c.idempotency_key for c in farm.calls] == [job["id"], job["id"]]
    job = (await detail(service, filed["id"]))["jobs"][0]
    assert (job["status"], job["attempts"]) == ("waiting_callback", 2)

    service.clock.advance(seconds=120)  # out of attempts: the sweep gives up on it
    await service.run_periodic()
    view = await detail(service, filed["id"])
    assert view["status"] == "action_required"
    assert view["jobs"][0]["last_error"] == "no callback after 2 calls"


async def test_cancelling_a_request_stops_its_calls(service: Service, farm: ConnectorFarm) -> None:
    await register(service, farm, "shop", answers())
    filed = await service.file_verified()
    # The fan-out ran with the verification; cancel before any call is made.
    await service.client.post(
        f"/v1/requests/{filed['id']}/cancel", headers=bearer(filed["status_token"])
    )
    await drive(service, farm)
    view = await detail(service, filed["id"])
    assert view["status"] == "cancelled"
    assert farm.calls == []
