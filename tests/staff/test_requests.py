"""Staff work on requests: the filtered list and its CSV report, requests entered for another
channel, the detail view, and every staff action with the states that forbid it."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import T0, Service
from tests.fixtures.mail import body_of
from tests.staff import (
    EMAIL,
    act,
    detail,
    dumps,
    enter,
    error_locs,
    ids,
    iso,
    listing,
    newest_first,
    staff_body,
    staff_headers,
)

Problem = Callable[[httpx.Response, int], dict[str, Any]]
BOB = "bob@example.net"
CSV_HEADER = [
    "id",
    "type",
    "status",
    "channel",
    "jurisdiction",
    "received_at",
    "due_date",
    "due_at",
    "extended",
    "days_left",
    "overdue",
    "closed_at",
]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def mails_about(service: Service, request_id: str, to: str = EMAIL) -> list[str]:
    return [
        f"{message['Subject']}\n{body_of(message)}"
        for message in service.mails(to)
        if request_id in message["Subject"]
    ]


# --- the list -------------------------------------------------------------------------------


async def test_status_and_type_filters(service: Service) -> None:
    running = await enter(service, type="access", identity_verified=True)
    waiting = await enter(service, type="erasure", email=BOB)
    cancelled = await enter(service, type="erasure")
    assert (await act(service, cancelled["id"], "cancel")).status_code == 200

    assert ids(await listing(service, status="in_progress")) == [running["id"]]
    assert ids(await listing(service, status="pending_verification")) == [waiting["id"]]
    assert ids(await listing(service, status="cancelled")) == [cancelled["id"]]
    assert ids(await listing(service, status="completed")) == []
    assert ids(await listing(service, type="erasure")) == newest_first(cancelled, waiting)
    assert ids(await listing(service, type="access")) == [running["id"]]
    assert ids(await listing(service, type="erasure", status="cancelled")) == [cancelled["id"]]
    everything = await listing(service)
    assert ids(everything) == newest_first(cancelled, waiting, running)
    item = everything.json()["items"][1]
    assert item["type"] == "erasure"
    assert item["status"] == "pending_verification"
    assert item["channel"] == "email"
    assert item["email"] == BOB
    assert item["due_date"] == "2026-04-10"
    assert item["due_at"] == "2026-04-10T21:59:59Z"
    assert item["days_left"] == 31
    assert item["overdue"] is False


async def test_overdue_filter_follows_the_clock(service: Service) -> None:
    late = await enter(service)
    closed = await enter(service, identity_verified=True)
    await service.run_jobs()
    assert (await detail(service, closed["id"]))["status"] == "completed"

    assert ids(await listing(service, overdue="true")) == []

    service.clock.at = utc(late["due_at"])  # the last second of the last day
    assert ids(await listing(service, overdue="true")) == []

    service.clock.advance(seconds=1)
    overdue = await listing(service, overdue="true")
    assert ids(overdue) == [late["id"]]  # the completed one is not overdue, however old
    assert overdue.json()["items"][0]["overdue"] is True
    assert overdue.json()["items"][0]["days_left"] == -1
    assert ids(await listing(service, overdue="false")) == [closed["id"]]


async def test_due_before_filter(service: Service) -> None:
    march = await enter(service, received_at="2026-02-02T10:00:00Z")  # due 2026-03-02
    easter = await enter(service, received_at="2026-03-05T10:00:00Z")  # due 2026-04-07
    april = await enter(service)  # due 2026-04-10
    assert (march["due_date"], easter["due_date"], april["due_date"]) == (
        "2026-03-02",
        "2026-04-07",
        "2026-04-10",
    )

    assert ids(await listing(service, due_before="2026-04-08")) == newest_first(easter, march)
    assert ids(await listing(service, due_before="2026-03-05")) == [march["id"]]
    assert ids(await listing(service, due_before="2026-03-01")) == []


async def test_email_filter_matches_the_exact_address_through_its_keyed_hash(
    service: Service,
) -> None:
    ana = await enter(service)
    bob = await enter(service, email=BOB)
    ana_again = await enter(service, type="erasure")

    assert ids(await listing(service, email=EMAIL)) == newest_first(ana_again, ana)
    assert ids(await listing(service, email="ana@EXAMPLE.ORG")) == newest_first(ana_again, ana)
    assert ids(await listing(service, email="bob@Example.Net")) == [bob["id"]]
    for near_miss in ("ana", "example.org", "ana@example.or", "ana@example.org.evil", "%"):
        assert ids(await listing(service, email=near_miss)) == [], near_miss


async def test_received_after_filter_honours_the_offset(service: Service) -> None:
    await enter(service, received_at="2026-03-01T10:00:00Z")
    fifth = await enter(service, received_at="2026-03-05T10:00:00Z")
    today = await enter(service)

    both = newest_first(today, fifth)
    assert ids(await listing(service, received_after="2026-03-05T09:30:00Z")) == both
    # 11:30 at UTC+2 is 09:30Z: the same instant, the same answer.
    assert ids(await listing(service, received_after="2026-03-05T11:30:00+02:00")) == both
    assert ids(await listing(service, received_after="2026-03-05T10:30:00Z")) == [today["id"]]
    assert ids(await listing(service, received_after="2026-03-10T10:00:00+00:00")) == []


INVALID_FILTERS = [
    ("status", "done"),
    ("type", "deletion"),
    ("overdue", "perhaps"),
    ("due_before", "2026-13-01"),
    ("due_before", "tomorrow"),
    ("received_after", "yesterday"),
    ("received_after", "2026-03-01T10:00:00"),  # no offset: which local day would it be?
    ("limit", "0"),
    ("limit", "501"),
    ("limit", "ten"),
    ("cursor", "c" * 41),
    ("email", "a" * 250 + "@x.org"),
]


async def test_invalid_filters_are_422_naming_the_parameter(
    service: Service, problem: Problem
) -> None:
    await enter(service)
    named = {}
    for name, value in INVALID_FILTERS:
        answer = await listing(service, **{name: value})
        named[name, value] = error_locs(problem(answer, 422))

    assert named == {(name, value): [["query", name]] for name, value in INVALID_FILTERS}


async def test_cursor_pagination_walks_every_request_once(service: Service) -> None:
    created = [
        (await enter(service, type="erasure" if n % 2 else "access"))["id"] for n in range(7)
    ]
    # Ids are time-ordered, so "newest first" is descending ids.
    expected = sorted(created, reverse=True)

    seen, cursor, pages = [], None, []
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await listing(service, **params)).json()
        pages.append(len(page["items"]))
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 5, "the cursor does not advance"

    assert pages == [3, 3, 1]
    assert seen == expected
    whole = (await listing(service, limit=7)).json()
    assert whole["next_cursor"] is None
    assert len(whole["items"]) == 7
    erasures = (await listing(service, type="erasure", limit=2)).json()
    rest = (await listing(service, type="erasure", limit=2, cursor=erasures["next_cursor"])).json()
    assert [i["id"] for i in erasures["items"] + rest["items"]] == sorted(
        (i for n, i in enumerate(created) if n % 2), reverse=True
    )
    assert rest["next_cursor"] is None


async def test_csv_report_has_a_header_one_row_per_match_and_no_identity(
    service: Service,
) -> None:
    erasures = [
        await enter(service, type="erasure", subject={"email": EMAIL, "name": "Ana Ruiz"}),
        await enter(service, type="erasure", email=BOB),
    ]
    await enter(service, type="access")

    answer = await service.client.get(
        "/v1/admin/requests",
        params={"type": "erasure"},
        headers={**staff_headers(), "Accept": "text/csv"},
    )

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == CSV_HEADER
    assert sorted(row[0] for row in rows[1:]) == sorted(e["id"] for e in erasures)
    by_id = {row[0]: dict(zip(CSV_HEADER, row, strict=True)) for row in rows[1:]}
    bob = by_id[erasures[1]["id"]]
    assert bob["type"] == "erasure"
    assert bob["status"] == "pending_verification"
    assert bob["received_at"] == "2026-03-10T09:00:00Z"
    assert bob["due_date"] == "2026-04-10"
    assert bob["closed_at"] == ""
    assert "@" not in answer.text
    assert "example" not in answer.text
    assert "Ana Ruiz" not in answer.text


async def test_csv_report_of_nothing_is_the_header_alone(service: Service) -> None:
    answer = await service.client.get(
        "/v1/admin/requests", headers={**staff_headers(), "Accept": "text/csv"}
    )

    assert answer.status_code == 200
    assert list(csv.reader(io.StringIO(answer.text))) == [CSV_HEADER]


# --- requests entered by staff --------------------------------------------------------------


async def test_every_other_channel_can_be_entered(service: Service) -> None:
    for channel in ("email", "post", "phone", "in_person"):
        view = await enter(
            service,
            channel=channel,
            type="rectification",
            rectifications=[{"field": "postal_address", "value": "1 rue X, Paris"}],
        )

        assert view["channel"] == channel
        assert view["type"] == "rectification"
        assert view["status"] == "pending_verification"
        assert view["rectifications"] == [{"field": "postal_address", "value": "1 rue X, Paris"}]
        assert view["verification"]["verified"] is False
        assert [e["action"] for e in view["events"]] == ["request.received"]
        assert view["events"][0]["details"]["channel"] == channel


async def test_the_deadline_runs_from_the_past_receipt(service: Service) -> None:
    created = await enter(service, received_at="2026-01-31T12:00:00Z")

    for view in (created, await detail(service, created["id"])):
        assert view["received_at"] == "2026-01-31T12:00:00Z"
        assert view["original_due_date"] == "2026-03-02"
        assert view["due_date"] == "2026-03-02"
        assert view["due_at"] == "2026-03-02T22:59:59Z"
        assert view["overdue"] is True  # entered late: today is 2026-03-10
        assert view["days_left"] == -8


async def test_receipt_is_counted_on_the_local_day(service: Service) -> None:
    # 00:30 on 1 February in Paris: the day of receipt is 1 February, not 31 January.
    created = await enter(service, received_at="2026-02-01T00:30:00+01:00")

    view = await detail(service, created["id"])
    assert view["received_at"] == "2026-01-31T23:30:00Z"
    assert view["deadline_explanation"]["receipt_day"] == "2026-02-01"
    assert view["due_date"] == "2026-03-02"  # 1 March is a Sunday


async def test_every_time_in_the_views_carries_an_offset(service: Service) -> None:
    created = await enter(service, received_at="2026-01-31T12:00:00Z")
    assert (await act(service, created["id"], "cancel")).status_code == 200

    view = await detail(service, created["id"])
    listed = (await listing(service)).json()["items"][0]

    for instant in (
        view["received_at"],
        view["due_at"],
        view["closed_at"],
        *(event["at"] for event in view["events"]),
        listed["received_at"],
        listed["due_at"],
        listed["closed_at"],
    ):
        assert instant.endswith("Z"), instant


INVALID_ENTRIES: list[tuple[dict[str, Any], list[str]]] = [
    ({"received_at": iso(T0 + timedelta(days=1))}, ["body", "received_at"]),
    ({"received_at": iso(T0 + timedelta(hours=1))}, ["body", "received_at"]),
    ({"received_at": "2026-03-01T10:00:00"}, ["body", "received_at"]),  # no offset
    ({"received_at": "last tuesday"}, ["body", "received_at"]),
    ({"received_at": None}, ["body", "received_at"]),
    ({"channel": "fax"}, ["body", "channel"]),
    ({"channel": "web"}, ["body", "channel"]),
    ({"channel": None}, ["body", "channel"]),
    ({"identity_verified": "maybe"}, ["body", "identity_verified"]),
    ({"jurisdiction": "mars"}, ["body", "jurisdiction"]),
    ({"subject": {"email": "not-an-address"}}, ["body", "subject", "email"]),
    ({"type": "rectification"}, ["body", "rectifications"]),
    ({"source": "crm"}, ["body", "source"]),
]


async def test_invalid_staff_entries_are_422_naming_the_field(
    service: Service, problem: Problem
) -> None:
    named = []
    for change, loc in INVALID_ENTRIES:
        body = {k: v for k, v in (staff_body(service) | change).items() if v is not None}
        answer = await service.client.post("/v1/admin/requests", json=body, headers=staff_headers())
        named.append((change, loc in error_locs(problem(answer, 422))))

    assert named == [(change, True) for change, _ in INVALID_ENTRIES]
    assert (await listing(service)).json()["items"] == []


async def test_identity_verified_by_staff_goes_straight_to_work(service: Service) -> None:
    view = await enter(service, identity_verified=True, channel="in_person")

    assert view["status"] == "in_progress"
    assert view["verification"]["verified"] is True
    assert view["verification"]["verified_by"] == "staff:alice"
    assert view["verification"]["verified_how"] == "staff"
    assert view["verification"]["expires_at"] is None
    assert view["due_date"] == "2026-04-10"

    await service.run_jobs()

    done = await detail(service, view["id"])
    assert done["status"] == "completed"  # no connector handles anything yet
    assert done["closed_at"] == "2026-03-10T09:00:00Z"
    assert [e["action"] for e in done["events"]] == [
        "request.received",
        "identity.verified",
        "request.approved",
        "export.ready",  # an access request is answered with a package, even an empty one
        "request.completed",
    ]
    assert not [m for m in service.mails(EMAIL) if "code" in body_of(m).lower()]


async def test_unverified_entry_waits_then_staff_approve_the_identity(service: Service) -> None:
    view = await enter(service, channel="post")
    assert view["status"] == "pending_verification"
    assert view["verification"]["method"] == "staff"
    assert view["verification"]["verified"] is False
    await service.run_jobs()
    assert [m["Subject"] for m in service.mails(EMAIL)] == [
        f"We have received your request {view['id']}"
    ]

    approved = await act(service, view["id"], "identity/approve")

    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["status"] == "in_progress"
    assert body["verification"]["verified"] is True
    assert body["verification"]["verified_by"] == "staff:alice"
    assert [e["action"] for e in body["events"]] == [
        "request.received",
        "identity.verified",
        "request.approved",
    ]
    await service.run_jobs()
    assert (await detail(service, view["id"]))["status"] == "completed"


async def test_a_verified_staff_entry_is_acknowledged_once(service: Service) -> None:
    view = await enter(service, identity_verified=True, channel="phone")
    await service.run_jobs()

    subjects = [m["Subject"] for m in service.mails(EMAIL)]

    assert subjects.count(f"We have received your request {view['id']}") == 1


async def test_an_unverified_staff_entry_is_acknowledged_once(service: Service) -> None:
    view = await enter(service, channel="post")
    assert (await act(service, view["id"], "identity/approve")).status_code == 200
    await service.run_jobs()

    subjects = [m["Subject"] for m in service.mails(EMAIL)]

    assert subjects.count(f"We have received your request {view['id']}") == 1


async def test_an_entry_waiting_for_staff_does_not_expire_on_its_own(service: Service) -> None:
    view = await enter(service, channel="post")

    service.clock.advance(days=15)
    await service.run_periodic()

    waiting = await detail(service, view["id"])
    assert waiting["status"] == "pending_verification"
    assert waiting["verification"]["expires_at"] is None
    assert not [m for m in service.mails(EMAIL) if "not confirmed" in m["Subject"]]


# --- the detail view ------------------------------------------------------------------------


async def test_detail_shows_subject_deadline_explanation_jobs_and_events(
    service: Service,
) -> None:
    created = await enter(
        service,
        received_at="2026-01-31T12:00:00Z",
        subject={"email": EMAIL, "name": "Ana Ruiz", "customer_id": "C-1"},
        details="please send everything",
    )
    other = await enter(service, email=BOB)
    assert (await act(service, created["id"], "identity/approve")).status_code == 200
    assert (await act(service, created["id"], "cancel")).status_code == 200

    view = await detail(service, created["id"])

    assert view["id"] == created["id"]
    assert view["subject"] == {
        "email": EMAIL,
        "name": "Ana Ruiz",
        "phone": None,
        "customer_id": "C-1",
    }
    assert view["details"] == "please send everything"
    assert view["verification"]["verified"] is True
    assert view["received_at"] == "2026-01-31T12:00:00Z"
    assert view["original_due_date"] == "2026-03-02"
    assert view["due_date"] == "2026-03-02"
    assert view["due_at"] == "2026-03-02T22:59:59Z"
    assert view["extended"] is False
    assert view["extension_reason"] is None
    assert view["days_left"] == -8
    assert view["overdue"] is False  # cancelled: nothing is late any more
    explanation = view["deadline_explanation"]
    assert explanation["regime"] == "gdpr"
    assert explanation["receipt_day"] == "2026-01-31"
    assert explanation["nominal_end"] == "2026-02-28"
    steps = " ".join(explanation["steps"])
    assert "Saturday 31 January 2026" in steps
    assert "the day of receipt is not counted" in steps
    assert "Saturday 28 February 2026 is a Saturday" in steps
    assert "Sunday 1 March 2026 is a Sunday" in steps
    assert "next working day, Monday 2 March 2026" in steps
    assert view["jobs"] == []
    events = view["events"]
    assert [e["action"] for e in events] == [
        "request.received",
        "identity.verified",
        "request.approved",
        "request.cancelled",
    ]
    linked = [e["seq"] for e in events if e["seq"] is not None]
    assert linked == sorted(linked)  # in chain order; the newest may not be linked yet
    assert {e["actor"] for e in events} == {"staff:alice", "system"}
    assert "@" not in dumps(events)
    assert "Ana Ruiz" not in dumps(events)
    assert other["id"] not in dumps(events)


async def test_detail_running_clock(service: Service) -> None:
    created = await enter(service)

    service.clock.advance(days=30)
    view = await detail(service, created["id"])
    assert (view["days_left"], view["overdue"]) == (1, False)

    service.clock.at = datetime(2026, 4, 10, 22, 0, tzinfo=UTC)  # past 23:59:59 in Paris
    view = await detail(service, created["id"])
    assert (view["days_left"], view["overdue"]) == (-1, True)


async def test_detail_lists_other_open_requests_of_the_same_person(service: Service) -> None:
    first = await enter(service)
    second = await enter(service, email="ANA@example.org", type="erasure")
    await enter(service, email=BOB)
    third = await enter(service, email=" ana@EXAMPLE.org", type="objection")

    assert (await detail(service, first["id"]))["duplicates"] == [second["id"], third["id"]]
    assert (await detail(service, third["id"]))["duplicates"] == [first["id"], second["id"]]
    assert (await act(service, second["id"], "cancel")).status_code == 200
    assert (await detail(service, first["id"]))["duplicates"] == [third["id"]]
    # A closed request still shows the person's open ones; it is no longer one of theirs.
    assert (await detail(service, second["id"]))["duplicates"] == [first["id"], third["id"]]
    assert (await detail(service, third["id"]))["duplicates"] == [first["id"]]


async def test_unknown_request_is_404(service: Service, problem: Problem) -> None:
    await enter(service)

    for request_id in ("req_unknown", "x" * 41, "%2e%2e"):
        answer = await service.client.get(
            f"/v1/admin/requests/{request_id}", headers=staff_headers()
        )
        problem(answer, 404)


async def test_actions_on_an_unknown_request_are_404(service: Service, problem: Problem) -> None:
    bodies = {
        "reject": {"reason": "other"},
        "extend": {"reason": "busy"},
        "jobs/job_x/complete": {"outcome": "found"},
    }
    for action in (
        "approve",
        "reject",
        "cancel",
        "extend",
        "identity/approve",
        "identity/reject",
        "jobs/job_x/retry",
        "jobs/job_x/complete",
    ):
        problem(await act(service, "req_unknown", action, bodies.get(action)), 404)


# --- staff actions --------------------------------------------------------------------------

REVIEW_ERASURE = {"review_types": ["erasure"]}


@pytest.mark.parametrize("settings_overrides", [REVIEW_ERASURE])
async def test_approve_a_request_waiting_for_review(service: Service, problem: Problem) -> None:
    view = await enter(service, type="erasure", identity_verified=True)
    assert view["status"] == "pending_review"
    assert view["events"][-1]["action"] == "request.review_needed"
    await service.run_jobs()
    assert (await detail(service, view["id"]))["status"] == "pending_review"  # nothing ran

    approved = await act(service, view["id"], "approve")

    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "in_progress"
    assert approved.json()["events"][-1] == {
        "seq": approved.json()["events"][-1]["seq"],
        "at": "2026-03-10T09:00:00Z",
        "actor": "staff:alice",
        "action": "request.approved",
        "details": {},
    }
    again = problem(await act(service, view["id"], "approve"), 409)
    assert again["current_status"] == "in_progress"
    await service.run_jobs()
    assert (await detail(service, view["id"]))["status"] == "completed"
    problem(await act(service, view["id"], "approve"), 409)


@pytest.mark.parametrize("settings_overrides", [REVIEW_ERASURE])
async def test_approve_needs_a_verified_identity_and_a_review(
    service: Service, problem: Problem
) -> None:
    unverified = await enter(service, type="erasure")
    automatic = await enter(service, type="access", identity_verified=True)

    body = problem(await act(service, unverified["id"], "approve"), 409)
    assert body["current_status"] == "pending_verification"
    problem(await act(service, automatic["id"], "approve"), 409)

    verified = await act(service, unverified["id"], "identity/approve")
    assert verified.json()["status"] == "pending_review"
    assert (await act(service, unverified["id"], "approve")).json()["status"] == "in_progress"


async def test_reject_sends_the_reason_and_the_right_to_complain(
    service: Service, problem: Problem
) -> None:
    view = await enter(service, identity_verified=True)

    rejected = await act(
        service,
        view["id"],
        "reject",
        {"reason": "manifestly_unfounded", "detail": "Third identical request this week."},
    )

    assert rejected.status_code == 200, rejected.text
    body = rejected.json()
    assert body["status"] == "rejected"
    assert body["rejection_reason"] == "manifestly_unfounded"
    assert body["rejection_detail"] == "Third identical request this week."
    assert body["closed_at"] == "2026-03-10T09:00:00Z"
    assert body["events"][-1]["action"] == "request.rejected"
    assert body["events"][-1]["details"] == {"reason": "manifestly_unfounded"}
    await service.run_jobs()
    assert (await detail(service, view["id"]))["status"] == "rejected"  # fan-out stood down
    (mail,) = [m for m in mails_about(service, view["id"]) if "supervisory" in m.lower()]
    assert "supervisory authority" in mail
    assert "https://www.edpb.europa.eu/about-edpb/about-edpb/members_en" in mail
    assert "Third identical request this week." in mail
    problem(await act(service, view["id"], "reject", {"reason": "other"}), 409)


INVALID_REJECTIONS: list[tuple[dict[str, Any] | None, list[str]]] = [
    ({}, ["body", "reason"]),
    ({"detail": "no reason"}, ["body", "reason"]),
    ({"reason": "spam"}, ["body", "reason"]),
    ({"reason": ""}, ["body", "reason"]),
    ({"reason": "other", "detail": "x" * 2001}, ["body", "detail"]),
    (None, ["body"]),
]


async def test_reject_needs_a_known_reason(service: Service, problem: Problem) -> None:
    view = await enter(service)

    named = []
    for body, loc in INVALID_REJECTIONS:
        answer = await act(service, view["id"], "reject", body)
        named.append((body, loc in error_locs(problem(answer, 422))))

    assert named == [(body, True) for body, _ in INVALID_REJECTIONS]
    assert (await detail(service, view["id"]))["status"] == "pending_verification"


async def test_reject_of_a_closed_request_is_409(service: Service, problem: Problem) -> None:
    completed = await enter(service, identity_verified=True)
    await service.run_jobs()
    cancelled = await enter(service)
    assert (await act(service, cancelled["id"], "cancel")).status_code == 200

    for view, status in ((completed, "completed"), (cancelled, "cancelled")):
        body = problem(await act(service, view["id"], "reject", {"reason": "excessive"}), 409)

        assert body["current_status"] == status
        assert status in body["detail"]
        assert (await detail(service, view["id"]))["rejection_reason"] is None


async def test_cancel_once(service: Service, problem: Problem) -> None:
    view = await enter(service, identity_verified=True)

    cancelled = await act(service, view["id"], "cancel")

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["closed_at"] == "2026-03-10T09:00:00Z"
    again = problem(await act(service, view["id"], "cancel"), 409)
    assert again["current_status"] == "cancelled"
    await service.run_jobs()
    assert (await detail(service, view["id"]))["status"] == "cancelled"
    assert [m for m in mails_about(service, view["id"]) if "cancelled" in m.splitlines()[0]]
    events = [e["action"] for e in (await detail(service, view["id"]))["events"]]
    assert events.count("request.cancelled") == 1


async def test_cancel_of_a_completed_request_is_409(service: Service, problem: Problem) -> None:
    view = await enter(service, identity_verified=True)
    await service.run_jobs()

    body = problem(await act(service, view["id"], "cancel"), 409)

    assert body["current_status"] == "completed"


async def test_extend_to_receipt_plus_three_months_and_tell_the_subject(
    service: Service, problem: Problem
) -> None:
    service.clock.at = datetime(2025, 2, 10, 10, 0, tzinfo=UTC)
    view = await enter(service, received_at="2025-01-31T10:00:00Z", identity_verified=True)
    assert view["due_date"] == "2025-02-28"

    extended = await act(service, view["id"], "extend", {"reason": "Twelve systems to search."})

    assert extended.status_code == 200, extended.text
    body = extended.json()
    assert body["extended"] is True
    assert body["extension_reason"] == "Twelve systems to search."
    assert body["original_due_date"] == "2025-02-28"
    assert body["due_date"] == "2025-04-30"
    assert body["due_at"] == "2025-04-30T21:59:59Z"
    assert body["deadline_explanation"]["extended"] is True
    assert "extended period of 3 months" in " ".join(body["deadline_explanation"]["steps"])
    assert body["events"][-1]["action"] == "deadline.extended"
    assert body["events"][-1]["details"] == {"due_date": "2025-04-30"}
    again = problem(await act(service, view["id"], "extend", {"reason": "still busy"}), 409)
    assert "already" in again["detail"]
    stored = await detail(service, view["id"])
    assert (stored["due_date"], stored["original_due_date"]) == ("2025-04-30", "2025-02-28")
    assert stored["extension_reason"] == "Twelve systems to search."
    await service.run_jobs()
    (mail,) = [m for m in mails_about(service, view["id"]) if "More time" in m]
    assert "Twelve systems to search." in mail
    assert "30 April 2025" in mail
    assert "still busy" not in mail


async def test_extend_is_allowed_until_the_last_second(service: Service, problem: Problem) -> None:
    on_time = await enter(service)
    too_late = await enter(service)
    due_at = utc(on_time["due_at"])
    assert on_time["due_at"] == "2026-04-10T21:59:59Z"

    service.clock.at = due_at
    assert (await act(service, on_time["id"], "extend", {"reason": "r"})).status_code == 200

    service.clock.at = due_at + timedelta(seconds=1)
    body = problem(await act(service, too_late["id"], "extend", {"reason": "r"}), 409)
    assert "passed" in body["detail"]
    view = await detail(service, too_late["id"])
    assert (view["extended"], view["due_date"]) == (False, "2026-04-10")


async def test_extend_refused_where_the_law_or_the_state_forbids_it(
    service: Service, problem: Problem
) -> None:
    lgpd = await enter(service, jurisdiction="lgpd")
    assert lgpd["due_date"] == "2026-03-25"
    completed = await enter(service, identity_verified=True)
    await service.run_jobs()

    body = problem(await act(service, lgpd["id"], "extend", {"reason": "busy"}), 409)
    assert "lgpd" in body["detail"]
    assert (await detail(service, lgpd["id"]))["due_date"] == "2026-03-25"
    body = problem(await act(service, completed["id"], "extend", {"reason": "busy"}), 409)
    assert body["current_status"] == "completed"


async def test_extend_needs_a_reason(service: Service, problem: Problem) -> None:
    view = await enter(service)

    for body in ({}, {"reason": ""}, {"reason": "   "}, {"why": "busy"}, None):
        answer = problem(await act(service, view["id"], "extend", body), 422)
        assert error_locs(answer)[0][0] == "body", body

    assert (await detail(service, view["id"]))["extended"] is False


async def test_identity_decisions_on_a_verified_identity_are_409(
    service: Service, problem: Problem
) -> None:
    view = await enter(service, identity_verified=True)

    for action in ("identity/approve", "identity/reject"):
        body = problem(await act(service, view["id"], action), 409)
        assert "already verified" in body["detail"]

    assert (await detail(service, view["id"]))["status"] == "in_progress"


async def test_identity_reject_refuses_the_request(service: Service, problem: Problem) -> None:
    view = await enter(service)

    answer = await act(service, view["id"], "identity/reject", {"note": "ID card expired"})

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "rejected"
    assert body["rejection_reason"] == "identity_not_verified"
    assert body["rejection_detail"] == "ID card expired"
    problem(await act(service, view["id"], "identity/approve"), 409)
    await service.run_jobs()
    assert [m for m in mails_about(service, view["id"]) if "supervisory authority" in m]


async def test_identity_approve_of_a_closed_request_is_409(
    service: Service, problem: Problem
) -> None:
    view = await enter(service)
    assert (await act(service, view["id"], "cancel")).status_code == 200

    problem(await act(service, view["id"], "identity/approve"), 409)

    assert (await detail(service, view["id"]))["verification"]["verified"] is False


async def test_unknown_jobs_are_404(service: Service, problem: Problem) -> None:
    view = await enter(service, identity_verified=True)

    retry = await act(service, view["id"], "jobs/job_unknown/retry")
    complete = await act(
        service,
        view["id"],
        "jobs/job_unknown/complete",
        {"status": "completed", "outcome": "not_found"},
    )

    problem(retry, 404)
    problem(complete, 404)
    assert (await detail(service, view["id"]))["status"] == "in_progress"
