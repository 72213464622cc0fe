"""The sweep repairs what a crash can leave behind, so no request is stuck for ever."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text

from tests.conftest import Service
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import ConnectorFarm, answers, flaky, silent


async def _sql(service: Service, statement: str, **params: Any) -> None:
    async with service.runtime.sessions() as session:
        await session.exec(text(statement), params=params)  # type: ignore[call-overload]
        await session.commit()


async def _sweep_later(service: Service, farm: ConnectorFarm, *, seconds: float = 120) -> None:
    service.clock.advance(seconds=seconds)
    await service.run_periodic()
    await drive(service, farm)


async def test_a_job_whose_engine_job_died_is_failed_for_staff(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "shop", flaky(failures=100))
    filed = await service.file_verified()
    await service.run_jobs()  # the fan-out, and a first call that answers 503
    job = (await detail(service, filed["id"]))["jobs"][0]
    assert job["status"] == "queued"
    # As if the worker died on the last attempt: the engine gave up without the handler.
    await _sql(service, "UPDATE connector_job SET status = 'running' WHERE id = :id", id=job["id"])
    await _sql(
        service,
        "UPDATE job SET status = 'failed', last_error = 'worker lost during attempt 8 of 8' "
        "WHERE kind = 'connectors.call'",
    )
    await _sweep_later(service, farm)
    view = await detail(service, filed["id"])
    assert view["status"] == "action_required"
    assert view["jobs"][0]["last_error"] == "worker lost during attempt 8 of 8"
    assert len(farm.calls) == 1


async def test_a_request_whose_jobs_all_succeeded_is_completed(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "batch", silent())
    filed = await service.file_verified()
    await drive(service, farm)
    job = (await detail(service, filed["id"]))["jobs"][0]
    # As if the settle was lost: the job is done, the request did not follow.
    await _sql(
        service,
        "UPDATE connector_job SET status = 'succeeded', outcome = 'not_found' WHERE id = :id",
        id=job["id"],
    )
    await _sweep_later(service, farm)
    assert (await detail(service, filed["id"]))["status"] == "completed"


async def test_a_callback_wait_without_its_timer_is_called_again(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "batch", silent(), callback_timeout_s=60)
    filed = await service.file_verified()
    await drive(service, farm)
    job = (await detail(service, filed["id"]))["jobs"][0]
    assert job["status"] == "waiting_callback"
    await _sql(service, "DELETE FROM job WHERE kind = 'connectors.call' AND status = 'queued'")
    await _sweep_later(service, farm, seconds=200)
    assert [c.idempotency_key for c in farm.calls] == [job["id"], job["id"]]


async def test_an_approved_request_whose_fan_out_was_lost_is_fanned_out(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(service, farm, "shop", answers())
    filed = await service.file_verified()
    await _sql(service, "DELETE FROM job WHERE kind = 'requests.fan_out'")
    await drive(service, farm)
    assert (await detail(service, filed["id"]))["status"] == "in_progress"
    await _sweep_later(service, farm)
    assert (await detail(service, filed["id"]))["status"] == "completed"
    assert len(farm.calls) == 1


async def test_the_sweep_leaves_healthy_work_alone(service: Service, farm: ConnectorFarm) -> None:
    await register(service, farm, "batch", silent(), callback_timeout_s=3600)
    filed = await service.file_verified()
    await drive(service, farm)
    before = await detail(service, filed["id"])
    await _sweep_later(service, farm, seconds=120)
    after = await detail(service, filed["id"])
    assert after["jobs"] == before["jobs"]
    assert after["status"] == "in_progress"
    assert len(farm.calls) == 1


async def test_the_sweep_leaves_a_package_being_built_alone(
    service: Service, farm: ConnectorFarm
) -> None:
    """An access request is in progress while its package is built, its jobs all done: the
    sweep must not start a second build beside the running one."""
    await register(service, farm, "shop", answers())
    await service.file_verified()
    await drive(service, farm)
    # As during a long build: the request in progress, its assembly held by a live worker.
    await _sql(service, "UPDATE dsr_request SET status = 'in_progress', closed_at = NULL")
    await _sql(
        service,
        "UPDATE job SET status = 'running', lease_owner = 'w', lease_expires_at = :later "
        "WHERE kind = 'exports.assemble'",
        later=service.clock.now() + timedelta(hours=1),
    )
    service.clock.advance(seconds=120)
    await service.run_periodic()
    async with service.runtime.read_sessions() as session:
        builds = (
            await session.exec(  # type: ignore[call-overload]
                text("SELECT status FROM job WHERE kind = 'exports.assemble'")
            )
        ).all()
    assert [b[0] for b in builds] == ["running"], "one build, the running one"
