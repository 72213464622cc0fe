"""Helpers for the staff API tests: tokens, staff-entered requests, actions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx

from app.security.staff import SCOPES, mint_staff_token
from tests.conftest import STAFF_SECRET, Service

EMAIL = "ana@example.org"


def staff_headers(*scopes: str, sub: str = "alice", ttl: int = 3600) -> dict[str, str]:
    """A staff token valid now, in real time: the verifier checks ``exp`` against the wall
    clock, not the service's frozen clock (``service.staff()`` mints at the frozen time)."""
    token = mint_staff_token(
        secret=STAFF_SECRET,
        subject=sub,
        scopes=scopes or sorted(SCOPES),
        ttl_seconds=ttl,
        now=datetime.now(UTC),
    )
    return {"Authorization": f"Bearer {token}"}


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def staff_body(
    service: Service,
    *,
    type: str = "access",
    email: str = EMAIL,
    channel: str = "email",
    received_at: datetime | str | None = None,
    identity_verified: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    when = received_at if received_at is not None else service.clock.now()
    return {
        "type": type,
        "subject": {"email": email},
        "channel": channel,
        "received_at": when if isinstance(when, str) else iso(when),
        "identity_verified": identity_verified,
        **extra,
    }


async def enter(service: Service, **fields: Any) -> dict[str, Any]:
    """File a request the way staff do for another channel; the staff view comes back."""
    answer = await service.client.post(
        "/v1/admin/requests", json=staff_body(service, **fields), headers=staff_headers()
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


async def detail(service: Service, request_id: str) -> dict[str, Any]:
    answer = await service.client.get(f"/v1/admin/requests/{request_id}", headers=staff_headers())
    assert answer.status_code == 200, answer.text
    return answer.json()


async def act(
    service: Service, request_id: str, action: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await service.client.post(
        f"/v1/admin/requests/{request_id}/{action}", json=body, headers=staff_headers()
    )


async def listing(service: Service, **params: Any) -> httpx.Response:
    return await service.client.get("/v1/admin/requests", params=params, headers=staff_headers())


def ids(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [item["id"] for item in answer.json()["items"]]


def newest_first(*views: dict[str, Any]) -> list[str]:
    """The ids as the list orders them: ids are time-ordered, newest first."""
    return sorted((view["id"] for view in views), reverse=True)


def error_locs(body: dict[str, Any]) -> list[list[Any]]:
    return [error["loc"] for error in body["errors"]]


def dumps(value: Any) -> str:
    return json.dumps(value, default=str)
