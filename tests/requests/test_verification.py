"""E-mail codes, status tokens, subject cancel, trusted intake assertions, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from jose import jwt

from tests.conftest import INTAKE_SECRET, Service, bearer
from tests.fixtures.mail import body_of


async def _verify(service: Service, filed: dict, code: str):  # type: ignore[no-untyped-def]
    return await service.client.post(
        f"/v1/requests/{filed['id']}/verification",
        json={"code": code},
        headers=bearer(filed["status_token"]),
    )


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_the_right_code_verifies_and_acknowledges(service: Service) -> None:
    filed = await service.file(
        {"type": "erasure", "subject": {"email": "ana@example.org"}, "language": "fr"}
    )
    code = await service.last_code()
    answer = await _verify(service, filed, code)
    assert answer.status_code == 200
    assert answer.json()["status"] == "in_progress"
    await service.run_jobs()
    subjects = [m["Subject"] for m in service.mails("ana@example.org")]
    assert len(subjects) == 3  # code, acknowledgement, completion (no connectors yet)
    acknowledgement = body_of(service.mails("ana@example.org")[1])
    assert "10 avril 2026" in acknowledgement  # the due date, in French words
    # a used code cannot be used again
    again = await _verify(service, filed, code)
    assert again.status_code == 409


async def test_wrong_codes_count_down_then_burn(service: Service, problem) -> None:
    filed = await service.file()
    code = await service.last_code()
    for left in (4, 3, 2, 1):
        found = problem(await _verify(service, filed, _wrong(code)), 422)
        assert found["attempts_left"] == left
        assert ["body", "code"] in [e["loc"] for e in found["errors"]]
    problem(await _verify(service, filed, _wrong(code)), 409)
    # burnt: even the right code is refused now
    problem(await _verify(service, filed, code), 409)
    resent = await service.client.post(
        f"/v1/requests/{filed['id']}/verification/resend", headers=bearer(filed["status_token"])
    )
    assert resent.status_code == 200
    new_code = await service.last_code()
    assert (await _verify(service, filed, new_code)).status_code == 200


async def test_a_code_expires_after_15_minutes(service: Service, problem) -> None:
    filed = await service.file()
    code = await service.last_code()
    service.clock.advance(minutes=15, seconds=1)
    problem(await _verify(service, filed, code), 409)


@pytest.mark.parametrize("code", ["12345", "1234567", "abcdef", "", None, 123456])
async def test_malformed_codes_are_422(service: Service, problem, code) -> None:
    filed = await service.file()
    found = problem(await _verify(service, filed, code), 422)
    assert ["body", "code"] in [e["loc"] for e in found["errors"]]


async def test_resend_replaces_the_code_and_is_rate_limited(service: Service, problem) -> None:
    filed = await service.file()
    first = await service.last_code()
    url = f"/v1/requests/{filed['id']}/verification/resend"
    for _ in range(3):
        assert (await service.client.post(url, headers=bearer(filed["status_token"]))).is_success
    limited = await service.client.post(url, headers=bearer(filed["status_token"]))
    problem(limited, 429)
    assert 0 < int(limited.headers["Retry-After"]) <= 3600
    latest = await service.last_code()
    if latest != first:
        problem(await _verify(service, filed, first), 422)
    service.clock.advance(minutes=61)
    assert (await service.client.post(url, headers=bearer(filed["status_token"]))).is_success


async def test_tokens_never_reveal_another_request(service: Service, problem) -> None:
    mine = await service.file()
    theirs = await service.file({"type": "access", "subject": {"email": "bob@example.org"}})
    problem(
        await service.client.get(
            f"/v1/requests/{theirs['id']}", headers=bearer(mine["status_token"])
        ),
        404,
    )
    problem(
        await service.client.get(
            "/v1/requests/req_doesnotexist", headers=bearer(mine["status_token"])
        ),
        404,
    )
    problem(await service.client.get(f"/v1/requests/{mine['id']}", headers=bearer("x" * 43)), 404)
    problem(await service.client.get(f"/v1/requests/{mine['id']}"), 401)
    problem(
        await service.client.post(
            f"/v1/requests/{theirs['id']}/cancel", headers=bearer(mine["status_token"])
        ),
        404,
    )
    problem(
        await service.client.post(
            f"/v1/requests/{theirs['id']}/verification",
            json={"code": "123456"},
            headers=bearer(mine["status_token"]),
        ),
        404,
    )
    staff_token = service.staff()
    problem(await service.client.get(f"/v1/requests/{mine['id']}", headers=staff_token), 404)


async def test_the_subject_view(service: Service) -> None:
    filed = await service.file()
    view = (
        await service.client.get(
            f"/v1/requests/{filed['id']}", headers=bearer(filed["status_token"])
        )
    ).json()
    assert {
        "id",
        "type",
        "status",
        "received_at",
        "due_date",
        "due_at",
        "extended",
        "rejection_reason",
        "export",
        "outcomes",
    } <= set(view)
    assert view["export"] is None
    assert view["outcomes"] == []
    # read back from the database, instants keep their offset (SQLite stores none)
    assert view["received_at"] == filed["received_at"]
    assert view["received_at"].endswith("Z")
    assert view["due_at"].endswith("Z")
    assert "subject" not in view
    assert "ana@example.org" not in str(view)


async def test_the_subject_can_cancel_once(service: Service, problem) -> None:
    filed = await service.file()
    url = f"/v1/requests/{filed['id']}/cancel"
    answer = await service.client.post(url, headers=bearer(filed["status_token"]))
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"
    problem(await service.client.post(url, headers=bearer(filed["status_token"])), 409)
    problem(await _verify(service, filed, "123456"), 409)
    await service.run_jobs()
    assert any(
        "cancel" in m["Subject"].lower() or "annul" in m["Subject"].lower()
        for m in service.mails("ana@example.org")
    )


async def test_a_completed_request_cannot_be_cancelled(service: Service, problem) -> None:
    filed = await service.file_verified()
    await service.run_jobs()
    problem(
        await service.client.post(
            f"/v1/requests/{filed['id']}/cancel", headers=bearer(filed["status_token"])
        ),
        409,
    )


def _assertion(claims: dict, secret: str = INTAKE_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


async def test_a_trusted_assertion_skips_the_code(service: Service) -> None:
    now = datetime.now(UTC)  # JWT expiry is checked against the real clock
    token = _assertion(
        {
            "iss": "shop",
            "sub": "C-1",
            "email": "Ana@Example.org",
            "exp": int((now + timedelta(minutes=5)).timestamp()),
        }
    )
    answer = await service.client.post(
        "/v1/requests",
        json={"type": "access", "subject": {"email": "ana@example.org"}},
        headers=bearer(token),
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "in_progress"
    assert answer.json()["verification"]["method"] == "assertion"
    await service.run_jobs()
    assert not any(
        "code" in body_of(m).lower() and "valid" in body_of(m).lower() for m in service.mails()
    )


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "shop", "email": "eve@example.org"},  # someone else
        {"iss": "shop", "sub": "C-2"},  # another customer
        {"iss": "shop"},  # names nobody
    ],
)
async def test_an_assertion_about_someone_else_is_401(service: Service, problem, claims) -> None:
    now = datetime.now(UTC)
    token = _assertion({**claims, "exp": int((now + timedelta(minutes=5)).timestamp())})
    answer = await service.client.post(
        "/v1/requests",
        json={"type": "access", "subject": {"email": "ana@example.org", "customer_id": "C-1"}},
        headers=bearer(token),
    )
    problem(answer, 401)


async def test_forged_or_expired_assertions_are_401(service: Service, problem) -> None:
    now = datetime.now(UTC)
    body = {"type": "access", "subject": {"email": "ana@example.org"}}
    forged = _assertion(
        {"email": "ana@example.org", "exp": int(now.timestamp()) + 300},
        secret="not-the-secret-" + "x" * 40,
    )
    expired = _assertion({"email": "ana@example.org", "exp": int(now.timestamp()) - 3600})
    for token in (forged, expired, "garbage"):
        problem(await service.client.post("/v1/requests", json=body, headers=bearer(token)), 401)
    answer = await service.client.post(
        "/v1/requests", json=body, headers={"Authorization": "Basic YTpi"}
    )
    problem(answer, 401)


@pytest.mark.parametrize("settings_overrides", [{"intake_jwt_secret": ""}])
async def test_assertions_without_a_trusted_issuer_are_401(service: Service, problem) -> None:
    token = _assertion({"email": "ana@example.org", "exp": 4_000_000_000})
    answer = await service.client.post(
        "/v1/requests",
        json={"type": "access", "subject": {"email": "ana@example.org"}},
        headers=bearer(token),
    )
    problem(answer, 401)


async def test_unverified_requests_expire_with_an_email(service: Service, problem) -> None:
    filed = await service.file()
    service.clock.advance(days=13)
    await service.run_periodic()
    view = await service.client.get(
        f"/v1/requests/{filed['id']}", headers=bearer(filed["status_token"])
    )
    assert view.json()["status"] == "pending_verification"
    service.clock.advance(days=1, seconds=1)
    await service.run_periodic()
    view = await service.client.get(
        f"/v1/requests/{filed['id']}", headers=bearer(filed["status_token"])
    )
    assert view.json()["status"] == "expired"
    expiry = service.mails("ana@example.org")[-1]
    assert "14" in body_of(expiry)
    problem(
        await service.client.post(
            f"/v1/requests/{filed['id']}/verification/resend", headers=bearer(filed["status_token"])
        ),
        409,
    )


@pytest.mark.parametrize("settings_overrides", [{"review_types": ["erasure"]}])
async def test_review_policy_waits_for_staff(service: Service, problem) -> None:
    filed = await service.file_verified(
        {"type": "erasure", "subject": {"email": "ana@example.org"}}
    )
    view = await service.client.get(
        f"/v1/requests/{filed['id']}", headers=bearer(filed["status_token"])
    )
    assert view.json()["status"] == "pending_review"
    approved = await service.client.post(
        f"/v1/admin/requests/{filed['id']}/approve", headers=service.staff("requests:write")
    )
    assert approved.status_code == 200
    assert approved.json()["status"] == "in_progress"
    # other types are still automatic
    other = await service.file_verified()
    view = await service.client.get(
        f"/v1/requests/{other['id']}", headers=bearer(other["status_token"])
    )
    assert view.json()["status"] == "in_progress"
