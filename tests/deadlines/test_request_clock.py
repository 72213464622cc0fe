"""The legal clock as requests live it: suspension and restart while identity is awaited,
extension, reminders, and the explanation staff see."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tests.conftest import Service
from tests.fixtures.mail import body_of

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


async def _document_request(service: Service, jurisdiction: str) -> dict:
    filed = await service.file(
        {"type": "erasure", "subject": {"email": "ana@example.org"}, "jurisdiction": jurisdiction}
    )
    answer = await service.client.post(
        f"/v1/requests/{filed['id']}/identity-document",
        files={"file": ("id.png", PNG, "image/png")},
        headers={"Authorization": f"Bearer {filed['status_token']}"},
    )
    assert answer.status_code == 202
    return filed


@pytest.mark.parametrize(
    ("jurisdiction", "expected"),
    [
        # received Tue 10 Mar 2026; identity approved Mon 16 Mar (6 local days later)
        ("gdpr", date(2026, 4, 10)),  # EU: the clock ran all along
        ("gdpr-fr", date(2026, 4, 16)),  # France: suspended 6 days
        ("uk-gdpr", date(2026, 4, 16)),  # UK: one month from 16 Mar
    ],
)
@pytest.mark.parametrize("settings_overrides", [{"document_types": ["erasure"]}])
async def test_identity_wait_moves_the_clock_by_regime(
    service: Service, jurisdiction: str, expected: date
) -> None:
    filed = await _document_request(service, jurisdiction)
    service.clock.at = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)
    approved = await service.client.post(
        f"/v1/admin/requests/{filed['id']}/identity/approve", headers=service.staff()
    )
    assert approved.status_code == 200, approved.text
    view = approved.json()
    assert view["due_date"] == expected.isoformat()
    explanation = view["deadline_explanation"]
    assert explanation["regime"] == jurisdiction
    assert explanation["receipt_day"] == "2026-03-10"
    if jurisdiction == "gdpr-fr":
        assert explanation["paused_days"] == 6
    if jurisdiction == "uk-gdpr":
        assert explanation["start_day"] == "2026-03-16"
    assert explanation["steps"], "staff must see how the date was reached"


async def test_staff_entered_request_runs_from_receipt(service: Service) -> None:
    service.clock.at = datetime(2025, 2, 3, 10, 0, tzinfo=UTC)
    created = await service.client.post(
        "/v1/admin/requests",
        headers=service.staff(),
        json={
            "type": "access",
            "subject": {"email": "ana@example.org"},
            "channel": "post",
            "received_at": "2025-01-31T10:00:00Z",
            "identity_verified": True,
        },
    )
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["due_date"] == "2025-02-28"
    extended = await service.client.post(
        f"/v1/admin/requests/{view['id']}/extend",
        headers=service.staff(),
        json={"reason": "twelve systems and three years of history to search"},
    )
    assert extended.status_code == 200, extended.text
    assert extended.json()["due_date"] == "2025-04-30"
    await service.run_jobs()  # no connectors yet: it completes, and then cannot be extended
    again = await service.client.post(
        f"/v1/admin/requests/{view['id']}/extend", headers=service.staff(), json={"reason": "x"}
    )
    assert again.status_code == 409


async def test_extension_to_three_months_with_the_reason_mailed(service: Service) -> None:
    service.clock.at = datetime(2025, 1, 31, 10, 0, tzinfo=UTC)
    filed = await service.file(
        {"type": "access", "subject": {"email": "ana@example.org"}, "language": "en"}
    )
    url = f"/v1/admin/requests/{filed['id']}"
    extended = await service.client.post(
        f"{url}/extend", headers=service.staff(), json={"reason": "many systems to search"}
    )
    assert extended.status_code == 200, extended.text
    view = extended.json()
    assert view["original_due_date"] == "2025-02-28"
    assert view["due_date"] == "2025-04-30"
    assert view["extended"] is True
    assert view["extension_reason"] == "many systems to search"
    explanation = view["deadline_explanation"]
    assert explanation["extended"] is True
    assert any("extended period of 3 months" in step for step in explanation["steps"])
    await service.run_jobs()
    mail = service.mails("ana@example.org")[-1]
    assert "many systems to search" in body_of(mail)
    assert "30 April 2025" in body_of(mail)


@pytest.mark.parametrize(
    "settings_overrides", [{"review_types": ["access"], "staff_email": "dpo@example.org"}]
)
async def test_reminders_at_7_and_2_days(service: Service) -> None:
    service.clock.at = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    filed = await service.file_verified()  # waits for review; due Fri 10 Apr 2026
    detail_url = f"/v1/admin/requests/{filed['id']}"

    async def reminders() -> list[dict]:
        events = (await service.client.get(detail_url, headers=service.staff())).json()["events"]
        return [e for e in events if e["action"] == "deadline.reminder"]

    service.clock.at = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)  # 8 days left
    await service.run_periodic()
    assert await reminders() == []
    service.clock.at = datetime(2026, 4, 3, 9, 0, tzinfo=UTC)  # 7 days left
    await service.run_periodic()
    await service.run_periodic()
    assert [e["details"]["thresholds"] for e in await reminders()] == [[7]]
    service.clock.at = datetime(2026, 4, 8, 9, 0, tzinfo=UTC)  # 2 days left
    await service.run_periodic()
    assert [e["details"]["thresholds"] for e in await reminders()] == [[7], [2]]
    await service.run_jobs()
    to_staff = service.mails("dpo@example.org")
    assert len(to_staff) == 2
    assert filed["id"] in body_of(to_staff[0])
    assert "ana@example.org" not in body_of(to_staff[0])
