"""The audit chain: every action leaves one hash-linked event; editing, re-hashing or
deleting a stored event is found by ``GET /v1/admin/audit/verify`` and ``dsr audit verify``."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from datetime import timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import text, update
from sqlmodel import col, select

from app import cli
from app.audit import service as audit
from app.audit.models import AuditEvent
from app.requests import service as requests_service
from tests.conftest import Service, bearer
from tests.staff import EMAIL, act, enter, staff_headers


async def verify(service: Service) -> dict[str, Any]:
    answer = await service.client.get("/v1/admin/audit/verify", headers=staff_headers("audit:read"))
    assert answer.status_code == 200, answer.text
    return answer.json()


async def stored_events(service: Service) -> list[AuditEvent]:
    await audit.link_all(service.runtime.session)  # recorded events are linked moments later
    async with service.runtime.session() as session:
        return list((await session.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))).all())


async def execute(service: Service, statement: Any, **params: Any) -> None:
    """Change the table behind the service's back, as someone with database access could."""
    async with service.runtime.session() as session:
        connection = await session.connection()
        await connection.execute(statement, params)


async def activity(service: Service) -> list[str]:
    """A little of everything: a web request verified by code, staff-entered requests,
    decisions, a refused action. Returns the request ids."""
    filed = await service.file_verified()
    entered = await enter(service, channel="phone", subject={"email": EMAIL, "name": "Ana Ruiz"})
    assert (await act(service, entered["id"], "identity/approve")).status_code == 200
    refused = await enter(service, type="erasure", email="bob@example.net")
    rejected = await act(
        service, refused["id"], "reject", {"reason": "excessive", "detail": "bob@example.net"}
    )
    assert rejected.status_code == 200
    assert (await act(service, refused["id"], "cancel")).status_code == 409
    await service.run_jobs()
    return [filed["id"], entered["id"], refused["id"]]


async def test_an_empty_chain_verifies(service: Service) -> None:
    assert await verify(service) == {"ok": True, "events": 0}


async def test_the_chain_verifies_after_activity(service: Service) -> None:
    request_ids = await activity(service)

    events = await stored_events(service)
    assert await verify(service) == {"ok": True, "events": len(events)}
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == audit.GENESIS
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
    assert all(re.fullmatch(r"[0-9a-f]{64}", e.hash) for e in events)
    assert len({e.hash for e in events}) == len(events)
    assert {e.request_id for e in events} == set(request_ids)
    actions = [(e.request_id, e.action) for e in events]
    assert actions.count((request_ids[2], "request.rejected")) == 1
    assert (request_ids[2], "request.cancelled") not in actions  # the refused cancel left none


async def test_no_identity_value_is_ever_written_to_the_chain(service: Service) -> None:
    await activity(service)

    for event in await stored_events(service):
        stored = f"{event.actor} {event.action} {event.details}"
        assert "@" not in stored, event.action
        assert "Ana Ruiz" not in stored
        assert not re.search(r"\b\d{6}\b", event.details), event.details  # no code


async def test_a_staff_view_lists_the_same_events_as_the_chain(service: Service) -> None:
    request_ids = await activity(service)

    for request_id in request_ids:
        chain = [e for e in await stored_events(service) if e.request_id == request_id]
        view = await service.client.get(f"/v1/admin/requests/{request_id}", headers=staff_headers())
        assert [(e["seq"], e["action"]) for e in view.json()["events"]] == [
            (e.seq, e.action) for e in chain
        ]


async def test_editing_any_stored_field_breaks_the_chain_at_that_event(service: Service) -> None:
    await activity(service)
    events = await stored_events(service)
    target = events[2]
    edits: list[tuple[str, Any]] = [
        ("details", '{"type":"erasure"}'),
        ("actor", "staff:mallory"),
        ("action", "request.cancelled"),
        ("request_id", "req_someone_else"),
        ("created_at", target.created_at + timedelta(days=1)),
        ("prev_hash", "f" * 64),
    ]

    table = AuditEvent.__table__  # type: ignore[attr-defined]
    for column, forged in edits:
        original = getattr(target, column)
        row = update(table).where(table.c.seq == target.seq)
        await execute(service, row.values({column: forged}))

        report = await verify(service)

        assert report["ok"] is False, column
        assert report["broken_at"] == target.seq, column
        assert report["events"] == target.seq - 1
        assert report["reason"]
        await execute(service, row.values({column: original}))
        assert (await verify(service))["ok"] is True, f"{column} was not restored"


async def test_a_details_edit_through_sql_is_reported_over_http(service: Service) -> None:
    await activity(service)
    seq = (await stored_events(service))[3].seq

    await execute(
        service,
        text("UPDATE audit_event SET details = :details WHERE seq = :seq"),
        details='{"reason":"other"}',
        seq=seq,
    )

    assert await verify(service) == {
        "ok": False,
        "events": seq - 1,
        "broken_at": seq,
        "reason": "the event was altered",
    }


async def test_re_hashing_an_edited_event_breaks_the_next_link(service: Service) -> None:
    await activity(service)
    target = (await stored_events(service))[1]
    forged = '{"forged":true}'
    digest = audit.event_hash(
        seq=target.seq,
        prev_hash=target.prev_hash,
        created_at=target.created_at,
        actor=target.actor,
        action=target.action,
        request_id=target.request_id,
        details=forged,
    )

    await execute(
        service,
        text("UPDATE audit_event SET details = :details, hash = :hash WHERE seq = :seq"),
        details=forged,
        hash=digest,
        seq=target.seq,
    )

    report = await verify(service)
    assert report["ok"] is False
    assert report["broken_at"] == target.seq + 1
    assert "link" in report["reason"]


async def test_deleting_the_last_event_is_detected(service: Service) -> None:
    await activity(service)
    last = (await stored_events(service))[-1].seq

    await execute(service, text("DELETE FROM audit_event WHERE seq = :seq"), seq=last)

    report = await verify(service)
    assert report["ok"] is False
    assert report["broken_at"] == last
    assert report["events"] == last - 1


async def test_deleting_an_event_in_the_middle_is_detected(service: Service) -> None:
    await activity(service)
    middle = (await stored_events(service))[4].seq

    await execute(service, text("DELETE FROM audit_event WHERE seq = :seq"), seq=middle)

    report = await verify(service)
    assert (report["ok"], report["broken_at"], report["events"]) == (False, middle, middle - 1)
    assert "missing" in report["reason"]


async def test_deleting_every_event_is_detected(service: Service) -> None:
    await activity(service)
    assert await stored_events(service)  # linked into the chain

    await execute(service, text("DELETE FROM audit_event"))

    report = await verify(service)
    assert (report["ok"], report["broken_at"], report["events"]) == (False, 1, 0)


async def test_concurrent_appenders_keep_one_line(service: Service) -> None:
    async def append(n: int) -> None:
        async with service.runtime.session() as session:
            await audit.record(
                session, actor="test", action="append", now=service.clock.now(), details={"n": n}
            )

    await asyncio.gather(*(append(n) for n in range(8)))

    events = await stored_events(service)
    assert [e.seq for e in events] == list(range(1, 9))
    assert sorted(json.loads(e.details)["n"] for e in events) == list(range(8))
    assert await verify(service) == {"ok": True, "events": 8}


async def test_verify_needs_the_audit_scope(service: Service) -> None:
    filed = await service.file()

    for headers in ({}, bearer(filed["status_token"])):
        answer = await service.client.get("/v1/admin/audit/verify", headers=headers)
        assert answer.status_code == 401
    answer = await service.client.get(
        "/v1/admin/audit/verify", headers=staff_headers("requests:read", "requests:write")
    )
    assert answer.status_code == 403


# --- dsr audit verify -----------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    try:
        cli.main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


@pytest.fixture
def cli_env(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = service.settings
    monkeypatch.setenv("DSR_ENV", "test")
    monkeypatch.setenv("DSR_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("DSR_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("DSR_ENCRYPTION_KEY", settings.encryption_key)
    monkeypatch.setenv("DSR_STAFF_JWT_SECRET", settings.staff_jwt_secret)


@pytest.mark.usefixtures("cli_env")
async def test_cli_verify_prints_the_report_and_exits_1_when_broken(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    await activity(service)
    count = len(await stored_events(service))

    code = await anyio.to_thread.run_sync(run_cli, ["audit", "verify"])

    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "events": count}

    await execute(service, text("UPDATE audit_event SET actor = 'staff:mallory' WHERE seq = 2"))
    code = await anyio.to_thread.run_sync(run_cli, ["audit", "verify"])

    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["broken_at"], report["events"]) == (False, 2, 1)


async def test_a_staff_view_shows_events_not_yet_linked(service: Service) -> None:
    filed = await service.file_verified()
    view = await service.client.get(f"/v1/admin/requests/{filed['id']}", headers=staff_headers())
    pending = view.json()["events"]
    assert [e["seq"] for e in pending] == [None] * len(pending)
    assert pending[0]["action"] == "request.received"
    await stored_events(service)
    view = await service.client.get(f"/v1/admin/requests/{filed['id']}", headers=staff_headers())
    linked = view.json()["events"]
    assert [e["action"] for e in linked] == [e["action"] for e in pending]
    assert all(isinstance(e["seq"], int) for e in linked)


async def test_a_staff_view_lists_linked_then_waiting_events_as_the_trail_reads_them(
    service: Service,
) -> None:
    filed = await service.file_verified()
    await stored_events(service)  # links what filing recorded
    later = service.clock.now().replace(microsecond=123456) + timedelta(seconds=5)
    async with service.runtime.session() as session:
        for n in (1, 2):
            await audit.record(
                session,
                actor="staff:eve",
                action=f"test.later.{n}",
                now=later,
                request_id=filed["id"],
                details={"n": n, "note": "é"},
            )
    view = await service.client.get(f"/v1/admin/requests/{filed['id']}", headers=staff_headers())
    events = view.json()["events"]
    async with service.runtime.read_sessions() as session:
        trail = await audit.events_for_request(session, filed["id"])
    assert [(e["seq"], e["actor"], e["action"], e["details"]) for e in events] == [
        (t.seq, t.actor, t.action, json.loads(t.details)) for t in trail
    ]
    assert [e["action"] for e in events[-2:]] == ["test.later.1", "test.later.2"]
    assert [e["seq"] for e in events[-2:]] == [None, None]
    assert all(isinstance(e["seq"], int) for e in events[:-2])
    assert [e["seq"] for e in events[:-2]] == sorted(e["seq"] for e in events[:-2])
    assert events[-1]["at"] == later.strftime("%Y-%m-%dT%H:%M:%S.123456Z")
    assert events[-1]["details"] == {"n": 2, "note": "é"}
    if service.runtime.engine.dialect.name == "postgresql":
        # PostgreSQL writes instants into JSON in the session's time zone: read back as UTC.
        async with service.runtime.session() as session:
            await session.exec(text("SET LOCAL TIME ZONE 'Asia/Kolkata'"))  # +05:30
            read = await requests_service.read_for_staff(session, filed["id"])
        assert [e.created_at for e in read.events] == [t.created_at for t in trail]
        assert read.events[-1].created_at == later
        assert {e.created_at.utcoffset() for e in read.events} == {timedelta(0)}


async def test_the_link_job_links_what_was_recorded(service: Service) -> None:
    await service.file_verified()
    await service.run_periodic()
    async with service.runtime.session() as session:
        linked = (await session.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))).all()
    # What was recorded before the tick is linked (jobs that ran after it wait for the next).
    assert [e.action for e in linked][:2] == ["request.received", "identity.verified"]
