"""Outcome reports for the rights that change data: what each system did, what it kept and
why, and which recipients were told (GDPR Art. 19), in the status view and the e-mail."""

from __future__ import annotations

from tests.conftest import Service, bearer
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import ConnectorFarm, answers, result
from tests.fixtures.mail import body_of

INVOICES = {
    "category": "invoices",
    "reason": "invoices are kept for tax audits",
    "legal_basis": "French Commercial Code L.123-22",
    "until": "2035-05-01",
}


async def test_erasure_with_retained_invoices_tells_the_subject_exactly_that(
    service: Service, farm: ConnectorFarm
) -> None:
    await register(
        service,
        farm,
        "billing",
        answers(result("retained", retained=[INVOICES])),
        request_types=["erasure"],
        processing={"recipients": ["accounting firm"]},
    )
    await register(
        service, farm, "newsletter", answers(result("erased")), request_types=["erasure"]
    )
    filed = await service.file_verified(
        {"type": "erasure", "subject": {"email": "ana@example.org"}, "language": "fr"}
    )
    await drive(service, farm)

    status = await service.client.get(
        f"/v1/requests/{filed['id']}", headers=bearer(filed["status_token"])
    )
    view = status.json()
    assert view["status"] == "completed"
    assert view["export"] is None
    outcomes = {o["system"]: o for o in view["outcomes"]}
    assert outcomes["billing"]["outcome"] == "retained"
    assert outcomes["billing"]["retained"] == [INVOICES]
    assert "sauf celles que la loi nous oblige à conserver" in outcomes["billing"]["summary"]
    assert outcomes["billing"]["recipients_notified"] == ["accounting firm"]
    assert outcomes["newsletter"]["summary"] == "vos données ont été effacées"

    [mail] = [m for m in service.mails("ana@example.org") if "traitée" in m["Subject"]]
    text = body_of(mail)
    assert "invoices conservé : invoices are kept for tax audits" in text
    assert "(French Commercial Code L.123-22), jusqu'au 1er mai 2035" in text
    assert "Destinataires informés de ce changement (article 19 du RGPD) : accounting firm" in text

    staff_view = await detail(service, filed["id"])
    assert staff_view["outcomes"] == view["outcomes"], "staff and subject read the same outcomes"
    events = staff_view["events"]
    notified = [e for e in events if e["action"] == "recipients.notified"]
    assert notified[0]["details"] == {"recipients": ["accounting firm"]}


async def test_recipients_are_not_told_of_an_access(service: Service, farm: ConnectorFarm) -> None:
    await register(service, farm, "crm", answers(), processing={"recipients": ["call centre"]})
    filed = await service.file_verified()
    await drive(service, farm)
    view = await detail(service, filed["id"])
    assert view["status"] == "completed"
    assert "recipients.notified" not in [e["action"] for e in view["events"]]
