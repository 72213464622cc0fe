"""A 2xx is sent only for a committed unit of work."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from tests.conftest import Service


async def test_a_failed_commit_is_never_answered_with_a_2xx(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(session):  # type: ignore[no-untyped-def]
        raise RuntimeError("the database went away at commit time")

    # The commit itself fails (intake writes its rows before the commit, in one statement,
    # so nothing earlier in the unit of work would notice).
    monkeypatch.setattr(AsyncSession, "commit", broken)
    answer = await service.client.post(
        "/v1/requests", json={"type": "access", "subject": {"email": "ana@example.org"}}
    )
    assert answer.status_code == 500
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "database went away" not in answer.text  # no internals in answers
    async with service.runtime.read_sessions() as session:
        rows = (await session.exec(text("SELECT count(*) FROM dsr_request"))).one()
    assert rows[0] == 0
