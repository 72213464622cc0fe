"""The e-mail outbox end to end: queued with the state change, sealed at rest, delivered by the
worker over real SMTP (aiosmtpd on loopback), retried when the server is down, never lost."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text

from app.jobs.models import JobStatus
from app.jobs.worker import Worker
from app.kit.clock import utc
from app.notifications.models import OutboxStatus
from app.notifications.service import DELIVER_KIND
from tests.conftest import Service, bearer
from tests.fixtures.mail import SmtpSink, body_of, code_in, free_port

ADDRESS = "ana@example.org"


def instant(value: datetime | str) -> datetime:
    """A raw timestamp column: a datetime from asyncpg, text from SQLite."""
    return utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


async def outbox_rows(service: Service) -> list[dict[str, Any]]:
    """The rows as the database holds them (no ORM, no decryption)."""
    async with service.runtime.session() as session:
        result = await session.exec(text("SELECT * FROM outbox_message"))  # type: ignore[call-overload]
        return [dict(r) for r in result.mappings().all()]


async def delivery_jobs(service: Service) -> list[dict[str, Any]]:
    async with service.runtime.session() as session:
        result = await session.exec(  # type: ignore[call-overload]
            text("SELECT * FROM job WHERE kind = :kind"), params={"kind": DELIVER_KIND}
        )
        return [dict(r) for r in result.mappings().all()]


async def verify(service: Service, filed: dict[str, Any], code: str) -> int:
    answer = await service.client.post(
        f"/v1/requests/{filed['id']}/verification",
        json={"code": code},
        headers=bearer(filed["status_token"]),
    )
    return answer.status_code


async def test_filing_queues_one_sealed_verification_mail(service: Service) -> None:
    filed = await service.file()

    [message] = await outbox_rows(service)
    assert message["template"] == "verification_code"
    assert message["status"] == OutboxStatus.pending
    assert message["request_id"] == filed["id"]
    assert message["sealed"]
    [job] = await delivery_jobs(service)
    assert job["status"] == JobStatus.queued
    assert message["id"] in job["payload"]

    await service.run_jobs()  # default settings: written as an .eml file
    [mail] = service.mails(ADDRESS)
    code = code_in(mail)

    # At rest, neither the address nor the code is readable: not in any column, nor in the
    # bytes under the sealed value's base64, though the service itself can open it.
    sealed = message.pop("sealed")
    at_rest = repr(message) + repr(job)
    assert ADDRESS not in at_rest.lower()
    assert "ana@" not in at_rest
    assert code not in at_rest
    raw = base64.b64decode(sealed)
    assert ADDRESS.encode() not in raw
    assert code.encode() not in raw
    opened = service.runtime.sealer.open_json(sealed, context=message["id"])
    assert opened["to"] == ADDRESS
    assert code in opened["text"]

    [sent] = await outbox_rows(service)
    assert sent["status"] == OutboxStatus.sent
    assert sent["sealed"] is None
    assert await verify(service, filed, code) == 200


async def test_a_burst_of_deliveries_shares_its_reads_and_its_commit(service: Service) -> None:
    filed = [
        await service.file({"type": "access", "subject": {"email": f"s{i}@example.org"}})
        for i in range(8)
    ]
    assert await Worker(service.runtime, concurrency=8).drain() == 8

    assert {m["To"] for m in service.mails()} == {f"s{i}@example.org" for i in range(8)}
    rows = await outbox_rows(service)
    assert [(r["status"], r["sealed"], r["attempts"]) for r in rows] == [
        (OutboxStatus.sent, None, 1)
    ] * 8
    assert {r["request_id"] for r in rows} == {f["id"] for f in filed}
    assert [j["status"] for j in await delivery_jobs(service)] == [JobStatus.succeeded] * 8
    # Eight handlers ran side by side: fewer reads and commits than mails.
    for name in ("notifications.read", "notifications.sent"):
        _, batches = service.runtime.extras[f"coalescer:{name}"]
        assert 1 <= batches.batches < 8


class TestDeliveryOverSmtp:
    @pytest.fixture
    def sink(self) -> Iterator[SmtpSink]:
        sink = SmtpSink()
        sink.start()
        yield sink
        sink.stop()

    @pytest.fixture
    def settings_overrides(self, sink: SmtpSink) -> dict[str, Any]:
        return {"smtp_url": sink.url, "mail_from": "privacy@dsr.test"}

    async def test_worker_delivers_and_drops_the_content(
        self, service: Service, sink: SmtpSink
    ) -> None:
        filed = await service.file()
        assert sink.messages == []  # queued, not sent in the request

        await service.run_jobs()

        [mail] = sink.messages
        assert mail["To"] == ADDRESS
        assert mail["From"] == "privacy@dsr.test"
        code = code_in(mail)
        assert len(code) == 6
        assert filed["id"] in body_of(mail)
        [row] = await outbox_rows(service)
        assert mail["Message-ID"] == f"<{row['id']}@dsr>"
        assert row["status"] == OutboxStatus.sent
        assert row["sealed"] is None
        assert row["last_error"] is None
        assert instant(row["sent_at"]) == service.clock.now()
        assert [j["status"] for j in await delivery_jobs(service)] == [JobStatus.succeeded]
        assert service.mails() == []  # over SMTP, not to files

        await service.run_jobs()
        assert len(sink.messages) == 1  # delivered once
        assert await verify(service, filed, code) == 200


class TestSmtpServerDown:
    @pytest.fixture
    def port(self) -> int:
        return free_port()  # nobody listens here (yet)

    @pytest.fixture
    def late_sinks(self) -> Iterator[list[SmtpSink]]:
        sinks: list[SmtpSink] = []
        yield sinks
        for sink in sinks:
            sink.stop()

    @pytest.fixture
    def settings_overrides(self, port: int) -> dict[str, Any]:
        return {"smtp_url": f"smtp://127.0.0.1:{port}"}

    async def test_failed_delivery_is_retried_and_nothing_is_lost(
        self, service: Service, port: int, late_sinks: list[SmtpSink]
    ) -> None:
        filed = await service.file()
        await service.run_jobs()

        [job] = await delivery_jobs(service)
        assert job["status"] == JobStatus.queued
        assert job["attempts"] == 1
        assert job["last_error"]
        assert "@" not in job["last_error"]
        run_after = instant(job["run_after"])
        assert run_after >= service.clock.now()
        [row] = await outbox_rows(service)
        assert row["status"] == OutboxStatus.pending
        assert row["attempts"] == 1
        assert row["last_error"]
        assert "@" not in row["last_error"]
        assert row["sealed"]

        sink = SmtpSink(port=port)  # the server comes back
        sink.start()
        late_sinks.append(sink)
        service.clock.at = run_after
        service.clock.advance(seconds=1)
        await service.run_jobs()

        [mail] = sink.messages
        assert mail["To"] == ADDRESS
        [row] = await outbox_rows(service)
        assert (row["status"], row["sealed"], row["attempts"]) == (OutboxStatus.sent, None, 2)
        assert row["last_error"] is None
        [job] = await delivery_jobs(service)
        assert (job["status"], job["attempts"]) == (JobStatus.succeeded, 2)
        assert await verify(service, filed, code_in(mail)) == 200


class RefusingSink(SmtpSink):
    """An SMTP server that refuses every recipient for good (5xx)."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        return "550 5.1.1 mailbox unavailable"


class TestRecipientRefused:
    @pytest.fixture
    def sink(self) -> Iterator[RefusingSink]:
        sink = RefusingSink()
        sink.start()
        yield sink
        sink.stop()

    @pytest.fixture
    def settings_overrides(self, sink: RefusingSink) -> dict[str, Any]:
        return {"smtp_url": sink.url}

    async def test_a_permanent_refusal_is_not_retried(
        self, service: Service, sink: RefusingSink
    ) -> None:
        await service.file()
        await service.run_jobs()

        [job] = await delivery_jobs(service)
        assert (job["status"], job["attempts"]) == (JobStatus.failed, 1)
        assert "550" in job["last_error"]
        assert "@" not in job["last_error"]
        [row] = await outbox_rows(service)
        assert row["status"] == OutboxStatus.failed
        assert "550" in row["last_error"]
        assert sink.messages == []
