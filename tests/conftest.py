"""Shared fixtures: a migrated database of each kind, the app over ASGI, a frozen clock, staff
tokens, a worker to drain jobs, and the mail the service wrote."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings, new_key
from app.jobs.worker import Worker
from app.kit.clock import FrozenClock
from app.main import create_app
from app.runtime import Runtime
from app.security.staff import SCOPES, mint_staff_token
from tests.fixtures.mail import code_in, read_mail_dir

pytest_plugins = ["tests.fixtures.database"]

STAFF_SECRET = "test-staff-secret-" + "s" * 40
INTAKE_SECRET = "test-intake-secret-" + "i" * 40
T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)  # a Tuesday


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Every ``async def`` test runs on asyncio through anyio's plugin (no extra plugin)."""
    if collector.funcnamefilter(name) and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or parametrize) to change settings."""
    return {}


@pytest.fixture
def settings(database_url: str, tmp_path: Path, settings_overrides: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": database_url,
        "data_dir": tmp_path / "var",
        "encryption_key": new_key(),
        "staff_jwt_secret": STAFF_SECRET,
        "intake_jwt_secret": INTAKE_SECRET,
        "public_url": "http://dsr.test",
        "default_language": "en",
        **settings_overrides,
    }
    return Settings(**values)


@dataclass
class Service:
    """The running service, as tests drive it."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings
    clock: FrozenClock

    @property
    def runtime(self) -> Runtime:
        return self.app.state.runtime

    def staff(self, *scopes: str, sub: str = "alice") -> dict[str, str]:
        # JWT expiry is checked against the real clock (python-jose), not the frozen one.
        token = mint_staff_token(secret=STAFF_SECRET, subject=sub, scopes=scopes or sorted(SCOPES))
        return {"Authorization": f"Bearer {token}"}

    async def run_jobs(self) -> int:
        """Run every due job (mail deliveries, fan-out, sweeps) to the end."""
        return await Worker(self.runtime, concurrency=4).drain()

    async def run_periodic(self) -> int:
        worker = Worker(self.runtime, concurrency=4)
        await worker.enqueue_periodic(force=True)
        return await worker.drain()

    def mails(self, to: str | None = None) -> list[EmailMessage]:
        messages = read_mail_dir(self.settings.mail_dir)
        return [m for m in messages if to is None or m["To"] == to]

    async def file(self, body: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
        payload = body or {"type": "access", "subject": {"email": "ana@example.org"}}
        answer = await self.client.post("/v1/requests", json=payload, headers=headers)
        assert answer.status_code == 202, answer.text
        return answer.json()

    async def last_code(self, to: str = "ana@example.org") -> str:
        await self.run_jobs()
        codes = [m for m in self.mails(to) if "code" in m.get_body().get_content().lower()]
        assert codes, "no verification e-mail was written"
        return code_in(codes[-1])

    async def file_verified(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        filed = await self.file(body)
        email = (body or {}).get("subject", {}).get("email", "ana@example.org")
        code = await self.last_code(email)
        answer = await self.client.post(
            f"/v1/requests/{filed['id']}/verification",
            json={"code": code},
            headers=bearer(filed["status_token"]),
        )
        assert answer.status_code == 200, answer.text
        return filed


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def service(settings: Settings, clock: FrozenClock) -> AsyncIterator[Service]:
    app = create_app(settings, clock=clock, run_worker=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://dsr.test") as client:
            yield Service(app=app, client=client, settings=settings, clock=clock)


@pytest.fixture
def problem() -> Callable[[httpx.Response, int], dict[str, Any]]:
    def check(response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["status"] == status
        assert body["title"]
        assert "detail" in body
        return body

    return check
