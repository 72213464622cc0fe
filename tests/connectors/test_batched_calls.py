"""Calls started and finished in batches: the calls of one moment share transactions, and
a batch that fails is redone call by call, so the request still ends right."""

from __future__ import annotations

from typing import Any

import pytest

from app.connectors import calls
from tests.conftest import Service
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import ConnectorFarm, answers


def _batches(service: Service, name: str) -> int:
    held: Any = service.runtime.extras.get(f"coalescer:{name}")
    return held[1].batches if held else 0


async def test_the_calls_of_one_request_start_and_finish_in_few_transactions(
    service: Service, farm: ConnectorFarm
) -> None:
    for n in range(6):
        await register(service, farm, f"system{n}", answers())
    filed = await service.file_verified()
    await drive(service, farm)

    view = await detail(service, filed["id"])
    assert view["status"] == "completed", view["jobs"]
    assert {j["status"] for j in view["jobs"]} == {"succeeded"}
    assert len(farm.calls) == 6
    # The worker of the tests runs 4 jobs at once: 6 calls start in at most 2 or 3 batches.
    assert 1 <= _batches(service, "connectors.start") < 6
    assert 1 <= _batches(service, "connectors.finish") < 6
    actions = [e["action"] for e in view["events"]]
    assert actions.count("connector_job.succeeded") == 6, "one audit event per job, still"
    assert actions.count("request.completed") == 1


async def test_a_failing_batch_is_redone_call_by_call(
    service: Service, farm: ConnectorFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("deadlock detected")

    monkeypatch.setattr(calls, "_start_many", broken)
    monkeypatch.setattr(calls, "_finish_many", broken)
    for n in range(3):
        await register(service, farm, f"system{n}", answers())
    filed = await service.file_verified()
    await drive(service, farm)

    view = await detail(service, filed["id"])
    assert view["status"] == "completed", view["jobs"]
    assert [j["attempts"] for j in view["jobs"]] == [1, 1, 1], "no attempt counted twice"
    assert len(farm.calls) == 3
    keys = {c.idempotency_key for c in farm.calls}
    assert keys == {j["id"] for j in view["jobs"]}
    actions = [e["action"] for e in view["events"]]
    assert actions.count("connector_job.succeeded") == 3


async def test_a_failure_after_a_finishing_batch_committed_keeps_its_results(
    service: Service, farm: ConnectorFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finishes are committed when the settle step fails: redoing them call by call would
    take them for late answers and delete the records they just stored."""

    async def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(calls, "settle_if_done", broken)
    for n in range(3):
        await register(service, farm, f"system{n}", answers())
    filed = await service.file_verified()
    await drive(service, farm)

    view = await detail(service, filed["id"])
    assert {j["status"] for j in view["jobs"]} == {"succeeded"}
    assert [j["attempts"] for j in view["jobs"]] == [1, 1, 1]
    assert [j["data_files"] for j in view["jobs"]] == [1, 1, 1]
    stored = list(service.settings.results_dir.glob("*.bin"))
    assert len(stored) == 3, "every committed result keeps its file"
    monkeypatch.undo()
    service.clock.advance(minutes=10)
    await service.run_periodic()  # the sweep queues the settle that was missed
    await service.run_jobs()
    assert (await detail(service, filed["id"]))["status"] == "completed"


async def test_a_call_that_cannot_be_built_fails_alone(
    service: Service, farm: ConnectorFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call failing after the start batch committed is that call's failure: the others
    in its batch are not started a second time."""
    from app.connectors import dispatch

    build = dispatch.build_call

    def build_or_fail(rt: Any, req: Any, job: Any, connector: Any, **kwargs: Any) -> Any:
        if connector.name == "system0":
            raise RuntimeError("its secret does not open")
        return build(rt, req, job, connector, **kwargs)

    monkeypatch.setattr(dispatch, "build_call", build_or_fail)
    for n in range(3):
        await register(service, farm, f"system{n}", answers())
    filed = await service.file_verified()
    await service.run_jobs()
    await farm.settled()

    jobs = {j["connector_name"]: j for j in (await detail(service, filed["id"]))["jobs"]}
    assert jobs["system1"]["status"] == jobs["system2"]["status"] == "succeeded"
    assert jobs["system1"]["attempts"] == jobs["system2"]["attempts"] == 1
    assert {c.system for c in farm.calls} == {"system1", "system2"}
    assert len(farm.calls) == 2, "no call made twice"
