"""The service's own privacy: nothing identifying in clear in the database, logs or audit."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.logs import QUIET_LIBRARIES, setup_logging
from tests.conftest import Service, bearer

SECRETS = ("ana.ruiz@example.org", "Ana Ruiz", "+33 6 12 34 56 78", "CUST-7781", "12 rue Secrète")


async def _lifecycle(service: Service) -> dict:
    filed = await service.file_verified(
        {
            "type": "rectification",
            "subject": {
                "email": "ana.ruiz@example.org",
                "name": "Ana Ruiz",
                "phone": "+33 6 12 34 56 78",
                "customer_id": "CUST-7781",
            },
            "rectifications": [{"field": "postal_address", "value": "12 rue Secrète"}],
            "details": "my name is Ana Ruiz",
        }
    )
    await service.run_jobs()
    return filed


async def test_no_identity_value_is_stored_in_clear(service: Service) -> None:
    filed = await _lifecycle(service)
    dump = []
    async with service.runtime.session() as session:
        for table in (
            "dsr_request",
            "audit_event",
            "outbox_message",
            "job",
            "verification_code",
            "idempotency_record",
        ):
            rows = (await session.exec(text(f"SELECT * FROM {table}"))).all()
            dump.extend(str(tuple(row)) for row in rows)
    blob = "\n".join(dump)
    assert filed["id"] in blob
    for value in SECRETS:
        assert value not in blob, value
    assert filed["status_token"] not in blob


async def test_logs_carry_ids_only(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    filed = await _lifecycle(service)
    await service.client.get(f"/v1/requests/{filed['id']}", headers=bearer("wrong-token"))
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for value in (*SECRETS, filed["status_token"]):
        assert value not in logged, value


async def test_staff_see_the_subject_and_the_audit_does_not(service: Service) -> None:
    filed = await _lifecycle(service)
    detail = (
        await service.client.get(f"/v1/admin/requests/{filed['id']}", headers=service.staff())
    ).json()
    assert detail["subject"]["email"] == "ana.ruiz@example.org"
    assert detail["rectifications"] == [{"field": "postal_address", "value": "12 rue Secrète"}]
    events = str(detail["events"])
    for value in SECRETS:
        assert value not in events


async def test_the_email_filter_uses_the_keyed_hash(service: Service) -> None:
    filed = await _lifecycle(service)
    found = await service.client.get(
        "/v1/admin/requests", params={"email": "Ana.Ruiz@EXAMPLE.org"}, headers=service.staff()
    )
    assert [item["id"] for item in found.json()["items"]] == [filed["id"]]
    none = await service.client.get(
        "/v1/admin/requests", params={"email": "ana@example.org"}, headers=service.staff()
    )
    assert none.json()["items"] == []


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """What ``setup_logging`` (as the CLI calls it) writes, into a buffer; the root logger is
    given back afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    quiet = {name: logging.getLogger(name).level for name in QUIET_LIBRARIES}
    setup_logging("INFO")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)


async def test_outgoing_urls_are_not_logged(service_log: io.StringIO) -> None:
    """A connector URL may carry a token in its query string: httpx's line per request,
    which names the URL, is not written at the service's INFO level."""
    app = Starlette(routes=[Route("/hook", lambda _: PlainTextResponse("{}"), methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        answer = await http.post("http://connector.test/hook?token=s3cret-in-url", content=b"{}")
    assert answer.status_code == 200
    logging.getLogger("dsr").info("probe")  # the service's own INFO lines still go out
    written = service_log.getvalue()
    assert '"event": "probe"' in written
    assert "s3cret-in-url" not in written
