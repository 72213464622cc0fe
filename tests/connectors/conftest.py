"""Fixtures for connector tests: a farm of real connector servers and helpers to register
systems and drive the worker until nothing is left to do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Service
from tests.fixtures.connectors import Behaviour, ConnectorFarm, connector_farm


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Fast retries: the frozen clock is advanced past them by ``drive``.
    return {"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05}


@pytest.fixture
async def farm(service: Service) -> AsyncIterator[ConnectorFarm]:
    async with connector_farm(deliver=service.client) as running:
        yield running


async def register(
    service: Service, farm: ConnectorFarm, name: str, behaviour: Behaviour, **fields: Any
) -> dict[str, Any]:
    """Register ``name`` as a webhook connector served by the farm with ``behaviour``."""
    body = {"name": name, "url": farm.url(name), **fields}
    answer = await service.client.post(
        "/v1/admin/connectors", json=body, headers=service.staff("connectors:write")
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    farm.behaviours[name] = behaviour
    farm.secrets[name] = created["signing_secret"]
    return created


async def drive(service: Service, farm: ConnectorFarm, *, rounds: int = 50) -> None:
    """Run jobs, let connectors call back, and step the clock past retry delays, until
    nothing moves any more."""
    idle = 0
    for _ in range(rounds):
        ran = await service.run_jobs()
        await farm.settled()
        if ran:
            idle = 0
            continue
        idle += 1
        if idle > 2:
            return
        service.clock.advance(seconds=1)


async def detail(service: Service, request_id: str) -> dict[str, Any]:
    answer = await service.client.get(
        f"/v1/admin/requests/{request_id}", headers=service.staff("requests:read")
    )
    assert answer.status_code == 200, answer.text
    return answer.json()
