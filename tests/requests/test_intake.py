"""POST /v1/requests: every type, field validation naming the field, idempotency."""

from __future__ import annotations

from datetime import date

import pytest

from tests.conftest import Service, bearer

ANA = {
    "email": "ana@example.org",
    "name": "Ana Ruiz",
    "phone": "+33 6 12 34 56 78",
    "customer_id": "C-1",
}

BODIES = {
    "access": {"type": "access", "subject": ANA},
    "erasure": {"type": "erasure", "subject": ANA, "details": "please delete my account"},
    "restriction": {"type": "restriction", "subject": ANA},
    "portability": {"type": "portability", "subject": ANA, "language": "fr"},
    "rectification": {
        "type": "rectification",
        "subject": ANA,
        "rectifications": [{"field": "postal_address", "value": "1 rue X, Paris"}],
    },
    "objection": {
        "type": "objection",
        "subject": ANA,
        "objection": {"purposes": ["direct_marketing"]},
    },
}


@pytest.mark.parametrize("kind", sorted(BODIES))
async def test_every_type_is_accepted(service: Service, kind: str) -> None:
    answer = await service.client.post("/v1/requests", json=BODIES[kind])
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["type"] == kind
    assert body["status"] == "pending_verification"
    assert body["id"].startswith("req_")
    assert len(body["status_token"]) >= 40
    assert body["verification"]["method"] == "email_code"
    # Received Tue 10 Mar 2026 in Paris: one month later is Fri 10 Apr 2026.
    assert body["due_date"] == "2026-04-10"
    assert body["due_at"] == "2026-04-10T21:59:59Z"
    assert body["received_at"].endswith("Z")


async def test_the_answer_is_the_same_for_known_and_unknown_people(service: Service) -> None:
    first = await service.file()
    second = await service.file({"type": "access", "subject": {"email": "nobody@example.net"}})
    assert set(first) == set(second)
    assert first["status"] == second["status"] == "pending_verification"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"type": "access"}, ["body", "subject"]),
        ({"type": "access", "subject": {}}, ["body", "subject", "email"]),
        ({"type": "access", "subject": {"email": "not-an-email"}}, ["body", "subject", "email"]),
        (
            {"type": "access", "subject": {"email": "a@" + "b" * 260 + ".org"}},
            ["body", "subject", "email"],
        ),
        ({"type": "teleport", "subject": {"email": "a@b.org"}}, ["body", "type"]),
        ({"subject": {"email": "a@b.org"}}, ["body", "type"]),
        (
            {"type": "access", "subject": {"email": "a@b.org"}, "jurisdiction": "mars"},
            ["body", "jurisdiction"],
        ),
        (
            {"type": "access", "subject": {"email": "a@b.org"}, "language": "x" * 36},
            ["body", "language"],
        ),
        (
            {"type": "access", "subject": {"email": "a@b.org"}, "language": "fr_FR!"},
            ["body", "language"],
        ),
        (
            {"type": "access", "subject": {"email": "a@b.org"}, "details": "x" * 5001},
            ["body", "details"],
        ),
        (
            {"type": "access", "subject": {"email": "a@b.org", "phone": "call me"}},
            ["body", "subject", "phone"],
        ),
        ({"type": "access", "subject": {"email": "a@b.org"}, "colour": "blue"}, ["body", "colour"]),
        (
            {"type": "access", "subject": {"email": "a@b.org", "ssn": "1"}},
            ["body", "subject", "ssn"],
        ),
        ({"type": "rectification", "subject": {"email": "a@b.org"}}, ["body", "rectifications"]),
        (
            {"type": "rectification", "subject": {"email": "a@b.org"}, "rectifications": []},
            ["body", "rectifications"],
        ),
        (
            {
                "type": "rectification",
                "subject": {"email": "a@b.org"},
                "rectifications": [{"value": "x"}],
            },
            ["body", "rectifications", 0, "field"],
        ),
        (
            {
                "type": "access",
                "subject": {"email": "a@b.org"},
                "rectifications": [{"field": "a", "value": "b"}],
            },
            ["body", "rectifications"],
        ),
        (
            {"type": "erasure", "subject": {"email": "a@b.org"}, "objection": {"purposes": []}},
            ["body", "objection"],
        ),
        (
            {
                "type": "objection",
                "subject": {"email": "a@b.org"},
                "objection": {"purposes": "all"},
            },
            ["body", "objection", "purposes"],
        ),
        ({"type": "access", "subject": {"email": ["a@b.org"]}}, ["body", "subject", "email"]),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(service: Service, problem, body, loc) -> None:
    answer = await service.client.post("/v1/requests", json=body)
    found = problem(answer, 422)
    assert loc in [error["loc"] for error in found["errors"]], found


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (b"null", "application/json"),
        (b"", "application/json"),
        (b"type=access", "application/x-www-form-urlencoded"),
        (
            '{"type": "access", "subject": {"email": "\udc80"}}'.encode("utf-8", "surrogatepass"),
            "application/json",
        ),
    ],
)
async def test_unparseable_bodies_are_4xx_problems(service: Service, content, content_type) -> None:
    answer = await service.client.post(
        "/v1/requests", content=content, headers={"Content-Type": content_type}
    )
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b'{"type": "access",', "the body is not valid JSON"),
        (b"", "a JSON body is required"),
    ],
)
async def test_a_body_that_is_not_json_is_said_so(service: Service, problem, content, said) -> None:
    answer = await service.client.post(
        "/v1/requests", content=content, headers={"Content-Type": "application/json"}
    )
    found = problem(answer, 422)
    assert found["type"] == "https://dsr.dev/problems/invalid-input"
    assert found["detail"].startswith(said)
    assert [error["loc"] for error in found["errors"]] == [["body"]]


async def test_field_errors_share_the_invalid_input_problem_type(service: Service, problem) -> None:
    answer = await service.client.post("/v1/requests", json={"type": "access", "subject": {}})
    found = problem(answer, 422)
    assert found["type"] == "https://dsr.dev/problems/invalid-input"
    assert found["detail"].startswith("invalid fields: ")


async def test_an_oversized_body_is_413(service: Service, problem) -> None:
    answer = await service.client.post(
        "/v1/requests",
        content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={"Content-Type": "application/json"},
    )
    problem(answer, 413)


async def test_idempotency_key_replays_the_first_answer(service: Service, problem) -> None:
    body = BODIES["access"]
    first = await service.client.post(
        "/v1/requests", json=body, headers={"Idempotency-Key": "form-42"}
    )
    again = await service.client.post(
        "/v1/requests", json=body, headers={"Idempotency-Key": "form-42"}
    )
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    # the replayed token works
    view = await service.client.get(
        f"/v1/requests/{first.json()['id']}", headers=bearer(again.json()["status_token"])
    )
    assert view.status_code == 200
    # one request, one code e-mail
    await service.run_jobs()
    assert len(service.mails("ana@example.org")) == 1
    other = await service.client.post(
        "/v1/requests", json=BODIES["erasure"], headers={"Idempotency-Key": "form-42"}
    )
    problem(other, 409)


async def test_idempotency_key_expires_after_a_day(service: Service) -> None:
    body = BODIES["access"]
    first = await service.file(body, **{"Idempotency-Key": "k1"})
    service.clock.advance(hours=25)
    second = await service.file(body, **{"Idempotency-Key": "k1"})
    assert second["id"] != first["id"]


async def test_received_at_in_paris_decides_the_deadline(service: Service) -> None:
    from datetime import UTC, datetime

    service.clock.at = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)  # 1 Feb in Paris
    filed = await service.file()
    assert date.fromisoformat(filed["due_date"]) == date(2026, 3, 2)
