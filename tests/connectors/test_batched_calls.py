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
