"""Intake's rows go out together (one statement on PostgreSQL): all of them or none."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.audit import service as audit
from app.db import metadata
from app.requests import rows
from tests.conftest import Service

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
rows_table = metadata.tables["idempotency_record"]


async def _count(service: Service, table: str) -> int:
    async with service.runtime.read_sessions() as session:
        return (await session.exec(text(f"SELECT count(*) FROM {table}"))).one()[0]  # type: ignore[call-overload]


async def test_a_failing_row_takes_the_others_with_it(service: Service) -> None:
    event = audit.pending_row(actor="subject", action="request.received", now=NOW)
    filed = await service.client.post(
        "/v1/requests", json={"type": "access", "subject": {"email": "ana@example.org"}}
    )
    assert filed.status_code == 202
    events_before = await _count(service, "audit_pending")
    duplicate = {"key_digest": "k" * 64, "body_digest": "b" * 64, "request_id": "req_x"}
    duplicate |= {"response_sealed": "x", "created_at": NOW}

    with pytest.raises(IntegrityError):
        async with service.runtime.session() as session:
            await rows.insert_rows(
                session,
                [
                    (audit.PENDING_TABLE, event),
                    (rows_table, duplicate),
                    (rows_table, duplicate),  # the same key twice
                ],
                notify_jobs=False,
            )

    assert await _count(service, "audit_pending") == events_before
    assert await _count(service, "idempotency_record") == 0


async def test_every_row_of_an_intake_is_stored(service: Service) -> None:
    filed = await service.client.post(
        "/v1/requests",
        json={"type": "access", "subject": {"email": "bo@example.org"}},
        headers={"Idempotency-Key": "intake-rows-1"},
    )
    assert filed.status_code == 202
    for table in ("dsr_request", "verification_code", "outbox_message", "idempotency_record"):
        assert await _count(service, table) == 1, table
    async with service.runtime.read_sessions() as session:
        kinds = (await session.exec(text("SELECT kind, status FROM job"))).all()  # type: ignore[call-overload]
    assert [tuple(row) for row in kinds] == [("notifications.deliver", "queued")]
    replay = await service.client.post(
        "/v1/requests",
        json={"type": "access", "subject": {"email": "bo@example.org"}},
        headers={"Idempotency-Key": "intake-rows-1"},
    )
    assert replay.status_code == 202
    assert replay.json()["id"] == filed.json()["id"]
    assert await _count(service, "dsr_request") == 1


async def test_batched_intakes_are_written_at_once(service: Service) -> None:
    from app.requests import service as requests
    from app.requests.schemas import RequestCreate

    async with service.runtime.session() as session:
        with rows.batched(session):
            for n in range(3):
                body = RequestCreate.model_validate(
                    {"type": "erasure", "subject": {"email": f"c{n}@example.org"}}
                )
                await requests.create_request(session, rt=service.runtime, body=body, now=NOW)
            assert await _count(service, "dsr_request") == 0  # kept, not written yet
            await rows.write_batch(session)

    assert await _count(service, "dsr_request") == 3
    assert await _count(service, "outbox_message") == 3
