"""A 2xx is sent only for a committed unit of work."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from app.identity import service as identity
from tests.conftest import Service

TABLES = ("dsr_request", "audit_pending", "verification_code", "outbox_message", "job")


async def stored(service: Service) -> dict[str, int]:
    counts = {}
    async with service.runtime.read_sessions() as session:
        for table in TABLES:
            counts[table] = (await session.exec(text(f"SELECT count(*) FROM {table}"))).one()[0]  # type: ignore[call-overload]
    return counts


async def test_a_failed_commit_is_never_answered_with_a_2xx(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(session):  # type: ignore[no-untyped-def]
        raise RuntimeError("the database went away at commit time")

    # A keyed intake reads the key's record first, so its insert runs in a transaction that
    # the commit (broken here) ends.
    monkeypatch.setattr(AsyncSession, "commit", broken)
    answer = await service.client.post(
        "/v1/requests",
        json={"type": "access", "subject": {"email": "ana@example.org"}},
        headers={"Idempotency-Key": "k-1"},
    )
    assert answer.status_code == 500
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "database went away" not in answer.text  # no internals in answers
    assert set((await stored(service)).values()) == {0}


async def test_an_intake_statement_that_fails_leaves_nothing(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unkeyed intake is one statement (on PostgreSQL in autocommit): when any of its
    rows is refused, none is stored and the answer is a 500."""
    real = identity.code_row

    def refused(**kwargs: Any) -> tuple[str, dict[str, Any]]:
        code, row = real(**kwargs)
        return code, {**row, "digest": None}  # NOT NULL: the database refuses the row

    monkeypatch.setattr(identity, "code_row", refused)
    answer = await service.client.post(
        "/v1/requests", json={"type": "access", "subject": {"email": "ana@example.org"}}
    )
    assert answer.status_code == 500
    assert set((await stored(service)).values()) == {0}


async def test_an_unkeyed_intake_commits_with_its_statement_on_postgresql(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the intake's rows are committed by their one statement (no BEGIN, no
    COMMIT round trip): another connection sees them before the session's commit runs. On
    SQLite the unit of work is an ordinary transaction."""
    seen_before_commit: list[dict[str, int]] = []
    real_commit = AsyncSession.commit

    async def watching(session: AsyncSession) -> None:
        seen_before_commit.append(await stored(service))
        await real_commit(session)

    monkeypatch.setattr(AsyncSession, "commit", watching)
    answer = await service.client.post(
        "/v1/requests", json={"type": "access", "subject": {"email": "ana@example.org"}}
    )
    assert answer.status_code == 202
    postgres = service.settings.database_url.startswith("postgresql")
    expected = 1 if postgres else 0
    assert seen_before_commit[0] == dict.fromkeys(TABLES, expected)
    assert await stored(service) == dict.fromkeys(TABLES, 1)
