"""The legal clock as staff query it (``/deadlines/preview``) and the figures of
``/stats``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx

from app.jobs import service as jobs
from tests.conftest import T0, Service
from tests.staff import act, detail, enter, error_locs, iso, staff_headers

Problem = Callable[[httpx.Response, int], dict[str, Any]]


async def preview(service: Service, **params: str) -> httpx.Response:
    return await service.client.get(
        "/v1/admin/deadlines/preview", params=params, headers=staff_headers("requests:read")
    )


# (received_at, due_date, due_at, extended_due_date or None), gdpr, FR, Europe/Paris
WORKED_EXAMPLES = [
    # 28 February 2026 is a Saturday, 1 March a Sunday.
    ("2026-01-31T12:00:00Z", "2026-03-02", "2026-03-02T22:59:59Z", "2026-04-30"),
    # 5 April 2025 is a Saturday, 6 April a Sunday; summer time by then (UTC+2).
    ("2025-03-05T10:00:00Z", "2025-04-07", "2025-04-07T21:59:59Z", None),
    # 1 May 2026 is Labour Day (a Friday), then a weekend.
    ("2026-04-01T10:00:00Z", "2026-05-04", "2026-05-04T21:59:59Z", None),
    # 23:30Z on 31 January is 00:30 on 1 February in Paris: 1 March is a Sunday.
    ("2026-01-31T23:30:00Z", "2026-03-02", "2026-03-02T22:59:59Z", None),
    # 31 January + 3 months = 30 April (no 31 April), a Wednesday.
    ("2025-01-31T10:00:00Z", "2025-02-28", "2025-02-28T22:59:59Z", "2025-04-30"),
]


async def test_worked_examples(service: Service) -> None:
    answers = {}
    for received_at, *_ in WORKED_EXAMPLES:
        answer = await preview(service, received_at=received_at, jurisdiction="gdpr")
        assert answer.status_code == 200, answer.text
        answers[received_at] = answer.json()

    for received_at, due_date, due_at, extended_due_date in WORKED_EXAMPLES:
        body = answers[received_at]
        assert (body["due_date"], body["due_at"]) == (due_date, due_at), received_at
        if extended_due_date is not None:
            assert body["extended_due_date"] == extended_due_date, received_at


async def test_preview_answer_in_full(service: Service) -> None:
    answer = await preview(service, received_at="2025-01-31T10:00:00+01:00")

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["jurisdiction"] == "gdpr"  # the default regime
    assert body["received_at"] == "2025-01-31T09:00:00Z"
    assert body["due_date"] == "2025-02-28"
    assert body["due_at"] == "2025-02-28T22:59:59Z"  # 23:59:59 in Paris, winter time
    assert body["extended_due_date"] == "2025-04-30"
    assert body["extended_due_at"] == "2025-04-30T21:59:59Z"  # summer time
    assert body["acknowledgement_due_date"] is None
    steps = " ".join(body["steps"])
    assert "Friday 31 January 2025" in steps
    assert "Friday 28 February 2025 is a working day" in steps


async def test_preview_without_extension_or_with_acknowledgement(service: Service) -> None:
    lgpd = (await preview(service, received_at="2026-03-10T09:00:00Z", jurisdiction="lgpd")).json()
    ccpa = (await preview(service, received_at="2026-03-10T09:00:00Z", jurisdiction="ccpa")).json()

    assert lgpd["jurisdiction"] == "lgpd"
    assert lgpd["due_date"] == "2026-03-25"  # 15 days, a Wednesday
    assert lgpd["extended_due_date"] is None
    assert lgpd["extended_due_at"] is None
    assert ccpa["due_date"] == "2026-04-24"  # 45 days, a Friday
    assert ccpa["extended_due_date"] == "2026-06-08"  # 90 days, a Monday
    assert ccpa["acknowledgement_due_date"] == "2026-03-24"  # 10 working days


async def test_preview_refuses_bad_input(service: Service, problem: Problem) -> None:
    cases = [
        ({"received_at": "2026-03-10T09:00:00Z", "jurisdiction": "mars"}, "jurisdiction"),
        ({"received_at": "2026-03-10T09:00:00"}, "received_at"),
        ({"received_at": "2026-02-30T09:00:00Z"}, "received_at"),
        ({"received_at": "soon"}, "received_at"),
        ({}, "received_at"),
        ({"jurisdiction": "gdpr"}, "received_at"),
    ]

    named = []
    for params, _ in cases:
        body = problem(await preview(service, **params), 422)
        named.append((params, error_locs(body)))

    assert named == [(params, [["query", name]]) for params, name in cases]


async def test_preview_agrees_with_a_stored_request(service: Service) -> None:
    stored = await enter(service, received_at="2026-02-01T00:30:00+01:00")

    previewed = (await preview(service, received_at="2026-01-31T23:30:00Z")).json()

    assert (stored["due_date"], stored["due_at"]) == (previewed["due_date"], previewed["due_at"])
    assert stored["deadline_explanation"]["steps"] == previewed["steps"]


# --- stats ----------------------------------------------------------------------------------


async def stats(service: Service) -> dict[str, Any]:
    answer = await service.client.get("/v1/admin/stats", headers=staff_headers("requests:read"))
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_stats_of_nothing(service: Service) -> None:
    assert await stats(service) == {
        "by_status": {},
        "by_type": {},
        "open": 0,
        "overdue": 0,
        "due_within_7_days": 0,
        "median_days_to_complete": None,
        "jobs_by_status": {},
        "oldest_waiting_job_at": None,
        "engine_jobs_by_status": {},
        "oldest_queued_engine_job_at": None,
    }


async def test_stats_count_statuses_types_deadlines_and_durations(service: Service) -> None:
    four_days = await enter(
        service, received_at=iso(T0 - timedelta(days=4)), identity_verified=True
    )
    two_days = await enter(
        service, type="erasure", received_at=iso(T0 - timedelta(days=2)), identity_verified=True
    )
    # Both completed now (no connector handles anything yet): 4 and 2 days after receipt.
    overdue = await enter(service, type="erasure", received_at=iso(T0 - timedelta(days=40)))
    due_friday = await enter(service, type="objection", received_at="2026-02-13T10:00:00Z")
    later = await enter(service, type="portability")
    cancelled = await enter(service, received_at=iso(T0 - timedelta(days=60)))
    assert (await act(service, cancelled["id"], "cancel")).status_code == 200
    assert (overdue["overdue"], due_friday["due_date"], later["due_date"]) == (
        True,
        "2026-03-13",
        "2026-04-10",
    )

    before = await stats(service)
    assert before["engine_jobs_by_status"].get("queued", 0) > 0  # e-mails and fan-outs
    assert before["oldest_queued_engine_job_at"] == "2026-03-10T09:00:00Z"
    assert before["jobs_by_status"] == {}  # no connector registered: no connector job
    await service.run_jobs()
    for done in (four_days, two_days):
        assert (await detail(service, done["id"]))["status"] == "completed"

    figures = await stats(service)

    assert figures["by_status"] == {"completed": 2, "pending_verification": 3, "cancelled": 1}
    assert figures["by_type"] == {"access": 2, "erasure": 2, "objection": 1, "portability": 1}
    assert figures["open"] == 3
    assert figures["overdue"] == 1  # the cancelled one is older but closed
    assert figures["due_within_7_days"] == 1
    assert figures["median_days_to_complete"] == 3.0
    jobs = figures["engine_jobs_by_status"]
    assert jobs.get("succeeded", 0) >= 2  # the two fan-outs, and the mail deliveries
    assert set(jobs) <= {"succeeded"}
    assert figures["oldest_queued_engine_job_at"] is None
    assert figures["oldest_waiting_job_at"] is None


async def test_queue_age_counts_only_jobs_that_are_due(service: Service) -> None:
    # A retry in backoff or a sweep planned for later is not a backlog until its time comes.
    async with service.runtime.session() as session:
        await jobs.enqueue(session, "test.later", {}, now=T0, run_after=T0 + timedelta(hours=1))

    early = await stats(service)
    assert early["engine_jobs_by_status"] == {"queued": 1}
    assert early["oldest_queued_engine_job_at"] is None
    service.clock.at = T0 + timedelta(hours=3)
    assert (await stats(service))["oldest_queued_engine_job_at"] == "2026-03-10T10:00:00Z"


async def test_stats_follow_the_clock(service: Service) -> None:
    await enter(service)  # due Friday 10 April 2026

    assert ((await stats(service))["overdue"], (await stats(service))["due_within_7_days"]) == (
        0,
        0,
    )
    service.clock.at = T0 + timedelta(days=24)  # Friday 3 April: 7 days left
    figures = await stats(service)
    assert (figures["overdue"], figures["due_within_7_days"]) == (0, 1)
    service.clock.at = T0 + timedelta(days=32)  # Saturday 11 April: overdue
    figures = await stats(service)
    assert (figures["overdue"], figures["due_within_7_days"]) == (1, 0)
