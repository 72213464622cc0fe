"""Every staff route refuses missing, bad, expired, unsigned and subject credentials (401)
and tokens without the route's scope (403), before looking at anything else."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from app.audit.router import router as audit_router
from app.security.staff import SCOPES, mint_staff_token
from app.staff.router import router as staff_router
from tests.conftest import STAFF_SECRET, Service, bearer
from tests.staff import staff_headers

UNKNOWN = "req_does_not_exist"
NOW = "2026-03-10T09:00:00Z"
CREATE_BODY = {
    "type": "access",
    "subject": {"email": "ana@example.org"},
    "channel": "email",
    "received_at": NOW,
}
RESULT_BODY = {"status": "completed", "outcome": "not_found"}

# (method, path, scope needed, query, body): every route of the staff and audit routers.
ROUTES: list[tuple[str, str, str, dict[str, str], dict[str, Any] | None]] = [
    ("GET", "/v1/admin/requests", "requests:read", {}, None),
    ("POST", "/v1/admin/requests", "requests:write", {}, CREATE_BODY),
    ("GET", "/v1/admin/requests/{request_id}", "requests:read", {}, None),
    ("POST", "/v1/admin/requests/{request_id}/approve", "requests:write", {}, None),
    (
        "POST",
        "/v1/admin/requests/{request_id}/reject",
        "requests:write",
        {},
        {"reason": "excessive"},
    ),
    ("POST", "/v1/admin/requests/{request_id}/cancel", "requests:write", {}, None),
    ("POST", "/v1/admin/requests/{request_id}/extend", "requests:write", {}, {"reason": "busy"}),
    ("POST", "/v1/admin/requests/{request_id}/identity/approve", "requests:write", {}, None),
    ("POST", "/v1/admin/requests/{request_id}/identity/reject", "requests:write", {}, None),
    (
        "POST",
        "/v1/admin/requests/{request_id}/jobs/{job_id}/retry",
        "requests:write",
        {},
        None,
    ),
    (
        "POST",
        "/v1/admin/requests/{request_id}/jobs/{job_id}/complete",
        "requests:write",
        {},
        RESULT_BODY,
    ),
    ("POST", "/v1/admin/requests/{request_id}/export/rebuild", "requests:write", {}, None),
    ("POST", "/v1/admin/requests/{request_id}/rerun", "requests:write", {}, {"reason": "x"}),
    ("GET", "/v1/admin/requests/{request_id}/runs", "requests:read", {}, None),
    ("GET", "/v1/admin/deadlines/preview", "requests:read", {"received_at": NOW}, None),
    ("GET", "/v1/admin/stats", "requests:read", {}, None),
    ("GET", "/v1/admin/audit/verify", "audit:read", {}, None),
]


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _all_scope_claims() -> dict[str, Any]:
    return {"sub": "mallory", "exp": int(time.time()) + 600, "scope": " ".join(sorted(SCOPES))}


def no_token() -> dict[str, str]:
    return {}


def garbage_token() -> dict[str, str]:
    return bearer("not-a-jwt")


def expired_token() -> dict[str, str]:
    expired = mint_staff_token(
        secret=STAFF_SECRET,
        subject="alice",
        scopes=sorted(SCOPES),
        ttl_seconds=3600,
        now=datetime.now(UTC) - timedelta(hours=2),
    )
    return bearer(expired)


def alg_none_token() -> dict[str, str]:
    return bearer(f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_all_scope_claims())}.")


def foreign_token() -> dict[str, str]:
    forged = mint_staff_token(secret="f" * 48, subject="mallory", scopes=sorted(SCOPES))
    return bearer(forged)


def basic_credentials() -> dict[str, str]:
    return {"Authorization": "Basic YWxpY2U6c2VjcmV0"}


async def call(
    service: Service,
    route: tuple[str, str, str, dict[str, str], dict[str, Any] | None],
    headers: dict[str, str],
    *,
    request_id: str = UNKNOWN,
) -> httpx.Response:
    method, path, _, query, body = route
    url = path.format(request_id=request_id, job_id="job_does_not_exist")
    return await service.client.request(method, url, params=query, json=body, headers=headers)


def test_the_route_table_covers_every_staff_and_audit_route() -> None:
    declared = {
        (method, route.path)
        for router in (staff_router, audit_router)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }

    assert declared == {(method, path) for method, path, *_ in ROUTES}


@pytest.mark.parametrize(
    "credentials",
    [no_token, garbage_token, expired_token, alg_none_token, foreign_token, basic_credentials],
)
async def test_bad_credentials_are_401_problems_on_every_route(
    service: Service,
    problem: Callable[[httpx.Response, int], dict[str, Any]],
    credentials: Callable[[], dict[str, str]],
) -> None:
    for route in ROUTES:
        answer = await call(service, route, credentials())

        body = problem(answer, 401)
        assert answer.headers["www-authenticate"] == "Bearer", route
        assert "Traceback" not in answer.text
        assert body["detail"] in ("a staff bearer token is required", "invalid or expired token")


async def test_bad_credentials_change_nothing(service: Service) -> None:
    await call(service, ROUTES[1], garbage_token())

    listed = await service.client.get("/v1/admin/requests", headers=staff_headers())
    assert listed.json()["items"] == []


async def test_a_subject_status_token_is_not_a_staff_token(
    service: Service, problem: Callable[[httpx.Response, int], dict[str, Any]]
) -> None:
    filed = await service.file()
    token = bearer(filed["status_token"])

    for route in ROUTES:
        answer = await call(service, route, token, request_id=filed["id"])

        problem(answer, 401)
    view = await service.client.get(f"/v1/admin/requests/{filed['id']}", headers=staff_headers())
    assert view.json()["status"] == "pending_verification"


async def test_a_token_without_the_route_scope_is_403_naming_it(
    service: Service, problem: Callable[[httpx.Response, int], dict[str, Any]]
) -> None:
    for route in ROUTES:
        needed = route[2]
        others = sorted(SCOPES - {needed})

        answer = await call(service, route, staff_headers(*others))

        body = problem(answer, 403)
        assert body["missing_scopes"] == [needed], route
        assert needed in body["detail"]


async def test_the_route_scope_alone_is_enough(service: Service) -> None:
    for route in ROUTES:
        answer = await call(service, route, staff_headers(route[2]))

        # Past authorisation: the unknown request is a 404, everything else succeeds.
        expected = 404 if "{request_id}" in route[1] else (201 if route[0] == "POST" else 200)
        assert answer.status_code == expected, (route, answer.text)


async def test_403_does_not_reveal_whether_a_request_exists(service: Service) -> None:
    filed = await service.file()
    reader = staff_headers("requests:read")

    known = await service.client.post(f"/v1/admin/requests/{filed['id']}/cancel", headers=reader)
    unknown = await service.client.post(f"/v1/admin/requests/{UNKNOWN}/cancel", headers=reader)

    assert known.status_code == unknown.status_code == 403
    assert known.json() == unknown.json()
    view = await service.client.get(f"/v1/admin/requests/{filed['id']}", headers=reader)
    assert view.json()["status"] == "pending_verification"


async def test_the_staff_member_is_the_recorded_actor(service: Service) -> None:
    created = await service.client.post(
        "/v1/admin/requests", json=CREATE_BODY, headers=staff_headers(sub="bob")
    )

    assert created.status_code == 201, created.text
    assert [event["actor"] for event in created.json()["events"]] == ["staff:bob"]
