"""The connector registry over the API: what a registration answers and stores, what it
refuses (problem+json naming the field), the allowed-hosts list, updates, deletion with and
without history, secret rotation with its grace period, the audit trail and the scopes."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.conftest import Service
from tests.connectors.conftest import detail, drive, register
from tests.fixtures.connectors import ConnectorFarm, answers, calls_back

BASE = "/v1/admin/connectors"
FAST_RETRIES = {"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05}
CRM = {
    "name": "crm",
    "url": "https://crm.internal/dsr",
    "mode": "webhook",
    "request_types": [
        "access",
        "erasure",
        "rectification",
        "portability",
        "objection",
        "restriction",
    ],
    "identity_types": ["email", "customer_id"],
    "categories": ["identity", "contact", "orders"],
    "processing": {
        "purposes": ["customer relationship"],
        "legal_basis": "contract",
        "retention": "3 years after last order",
        "recipients": ["mailing provider"],
        "source": "collected from the subject",
    },
    "timeout_s": 10,
    "max_attempts": 8,
}


def admin(service: Service) -> dict[str, str]:
    return service.staff("connectors:write")


async def create(service: Service, **overrides: Any) -> dict[str, Any]:
    answer = await service.client.post(BASE, json={**CRM, **overrides}, headers=admin(service))
    assert answer.status_code == 201, answer.text
    return answer.json()


async def listed(service: Service, *, include_deleted: bool = False) -> list[dict[str, Any]]:
    params = {"include_deleted": "true"} if include_deleted else {}
    answer = await service.client.get(BASE, params=params, headers=admin(service))
    assert answer.status_code == 200, answer.text
    assert "signing_secret" not in answer.text
    return answer.json()["items"]


async def fetch(service: Service, connector_id: str) -> dict[str, Any]:
    answer = await service.client.get(f"{BASE}/{connector_id}", headers=admin(service))
    assert answer.status_code == 200, answer.text
    return answer.json()


def secret_key(secret: str) -> bytes:
    assert secret.startswith("whsec_"), secret
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def field_named(body: dict[str, Any], name: str) -> bool:
    return any(name in error["loc"] for error in body.get("errors", []))


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def rows(service: Service, sql: str) -> list[dict[str, Any]]:
    async with service.runtime.engine.connect() as connection:
        result = await connection.execute(text(sql))
        return [dict(row) for row in result.mappings().all()]


async def audit_count(service: Service) -> int:
    answer = await service.client.get("/v1/admin/audit/verify", headers=service.staff("audit:read"))
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["ok"] is True, report
    return report["events"]


# --- registration ---------------------------------------------------------------------------


async def test_create_echoes_the_entry_and_shows_a_fresh_secret_once(service: Service) -> None:
    answer = await service.client.post(BASE, json=CRM, headers=admin(service))

    assert answer.status_code == 201, answer.text
    created = answer.json()
    for name in ("name", "url", "mode", "categories", "timeout_s", "max_attempts"):
        assert created[name] == CRM[name], name
    assert sorted(created["request_types"]) == sorted(CRM["request_types"])
    assert sorted(created["identity_types"]) == sorted(CRM["identity_types"])
    assert {k: created["processing"][k] for k in CRM["processing"]} == CRM["processing"]
    assert created["id"]
    assert created["enabled"] is True
    assert created["deleted_at"] is None
    assert when(created["created_at"]) == service.clock.now()
    assert len(secret_key(created["signing_secret"])) == 32

    other = await create(service, name="shop", url="https://shop.internal/dsr")
    assert other["signing_secret"] != created["signing_secret"]
    assert secret_key(other["signing_secret"]) != secret_key(created["signing_secret"])
    assert other["id"] != created["id"]

    one = await service.client.get(f"{BASE}/{created['id']}", headers=admin(service))
    assert one.status_code == 200, one.text
    assert "signing_secret" not in one.json()
    assert {k: v for k, v in created.items() if k != "signing_secret"} == one.json()
    everything = await listed(service)
    assert [c["name"] for c in everything] == ["crm", "shop"]
    for secret in (created["signing_secret"], other["signing_secret"]):
        assert secret.removeprefix("whsec_") not in one.text
        assert secret.removeprefix("whsec_") not in str(everything)


async def test_secret_is_not_stored_in_the_clear(service: Service) -> None:
    created = await create(service)
    secret = created["signing_secret"]
    stored = await rows(service, "SELECT * FROM connector")
    assert len(stored) == 1
    key = secret_key(secret)
    forms = [secret, secret.removeprefix("whsec_"), key.hex(), base64.urlsafe_b64encode(key)]
    for column, value in stored[0].items():
        for form in forms:
            needle = form.decode() if isinstance(form, bytes) else form
            assert needle not in str(value), f"secret readable in connector.{column}"
    for event in await rows(service, "SELECT details FROM audit_event"):
        assert secret.removeprefix("whsec_") not in event["details"]


async def test_manual_connector_needs_no_url(service: Service) -> None:
    created = await create(service, name="paper archive", mode="manual", url=None)
    assert (created["mode"], created["url"]) == ("manual", None)
    assert len(secret_key(created["signing_secret"])) == 32


INVALID = [
    ("url", {"url": "ftp://crm.internal/dsr"}),
    ("url", {"url": "javascript:alert(1)"}),
    ("url", {"url": "/relative/dsr"}),
    ("url", {"url": "crm.internal/dsr"}),
    ("url", {"url": "https://user:pw@crm.internal/x"}),
    ("url", {"url": "https://user@crm.internal/x"}),
    ("url", {"url": "http:///no-host"}),
    ("url", {"url": None}),
    ("url", {"url": ""}),
    ("request_types", {"request_types": ["access", "deletion"]}),
    ("request_types", {"request_types": []}),
    ("identity_types", {"identity_types": ["email", "passport"]}),
    ("identity_types", {"identity_types": []}),
    ("timeout_s", {"timeout_s": 0}),
    ("timeout_s", {"timeout_s": -1}),
    ("max_attempts", {"max_attempts": 0}),
    ("mode", {"mode": "carrier pigeon"}),
    ("name", {"name": ""}),
    ("colour", {"colour": "blue"}),
    ("legal_basis_typo", {"processing": {"legal_basis_typo": "contract"}}),
]


async def test_invalid_registrations_are_422_naming_the_field(service: Service, problem) -> None:
    headers = admin(service)
    for name, change in INVALID:
        answer = await service.client.post(BASE, json={**CRM, **change}, headers=headers)
        body = problem(answer, 422)
        assert field_named(body, name), (change, body)
        assert "signing_secret" not in answer.text
    without_url = {k: v for k, v in CRM.items() if k != "url"}
    body = problem(await service.client.post(BASE, json=without_url, headers=headers), 422)
    assert field_named(body, "url"), body
    assert await listed(service, include_deleted=True) == [], "a refused entry was stored"


async def test_duplicate_name_is_409_whatever_the_case(service: Service, problem) -> None:
    await create(service)
    for name in ("crm", "CRM", "  Crm "):
        answer = await service.client.post(BASE, json={**CRM, "name": name}, headers=admin(service))
        problem(answer, 409)
    assert [c["name"] for c in await listed(service)] == ["crm"]


@pytest.mark.parametrize(
    "settings_overrides", [{"connector_allowed_hosts": "127.0.0.0/8, crm.internal"}]
)
async def test_allowed_hosts_narrow_where_connectors_may_live(service: Service, problem) -> None:
    headers = admin(service)
    for url in (
        "https://evil.example/dsr",
        "https://crm.internal.evil.example/dsr",
        "http://10.0.0.8/dsr",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/dsr",
    ):
        answer = await service.client.post(BASE, json={**CRM, "url": url}, headers=headers)
        body = problem(answer, 422)
        assert field_named(body, "url"), (url, body)

    await create(service, name="crm", url="https://crm.internal/dsr")
    await create(service, name="crm2", url="https://CRM.Internal:8443/dsr")
    by_cidr = await create(service, name="local", url="http://127.0.0.1:9000/dsr")
    await create(service, name="local2", url="http://127.10.20.30/dsr")
    assert [c["name"] for c in await listed(service)] == ["crm", "crm2", "local", "local2"]

    moved = await service.client.patch(
        f"{BASE}/{by_cidr['id']}", json={"url": "https://evil.example/dsr"}, headers=headers
    )
    assert field_named(problem(moved, 422), "url")
    assert (await fetch(service, by_cidr["id"]))["url"] == "http://127.0.0.1:9000/dsr"


# --- updates ----------------------------------------------------------------------------------


async def test_patch_changes_only_the_given_fields(service: Service) -> None:
    created = await create(service)
    before = {k: v for k, v in created.items() if k != "signing_secret"}
    service.clock.advance(minutes=5)

    answer = await service.client.patch(
        f"{BASE}/{created['id']}",
        json={"timeout_s": 30, "categories": ["orders"], "identity_types": ["customer_id"]},
        headers=admin(service),
    )

    assert answer.status_code == 200, answer.text
    after = answer.json()
    assert "signing_secret" not in after
    changed = {k for k in before if after[k] != before[k]}
    assert changed == {"timeout_s", "categories", "identity_types", "updated_at"}
    assert (after["timeout_s"], after["categories"]) == (30, ["orders"])
    assert after["identity_types"] == ["customer_id"]
    assert when(after["updated_at"]) == service.clock.now()
    assert when(after["updated_at"]) - when(after["created_at"]) == timedelta(minutes=5)
    assert await fetch(service, created["id"]) == after

    service.clock.advance(minutes=1)
    renamed = await service.client.patch(
        f"{BASE}/{created['id']}", json={"name": "CRM"}, headers=admin(service)
    )
    assert renamed.status_code == 200, "renaming to its own name in another case is no clash"
    assert renamed.json()["name"] == "CRM"


async def test_patch_validates_like_create_and_changes_nothing_when_refused(
    service: Service, problem
) -> None:
    created = await create(service)
    other = await create(service, name="shop", url="https://shop.internal/dsr")
    stored = await fetch(service, created["id"])
    headers = admin(service)
    service.clock.advance(minutes=5)
    cases = [
        ("url", {"url": "ftp://crm.internal/dsr"}),
        ("url", {"url": "javascript:alert(1)"}),
        ("url", {"url": "/relative"}),
        ("url", {"url": "https://user:pw@crm.internal/x"}),
        ("url", {"url": None}),
        ("request_types", {"request_types": []}),
        ("request_types", {"request_types": ["deletion"]}),
        ("identity_types", {"identity_types": ["passport"]}),
        ("timeout_s", {"timeout_s": 0}),
        ("name", {"name": None}),
        ("colour", {"colour": "blue"}),
    ]
    for name, change in cases:
        answer = await service.client.patch(f"{BASE}/{created['id']}", json=change, headers=headers)
        body = problem(answer, 422)
        assert field_named(body, name), (change, body)
    for clash in ("shop", "SHOP"):
        answer = await service.client.patch(
            f"{BASE}/{created['id']}", json={"name": clash}, headers=headers
        )
        problem(answer, 409)
    assert await fetch(service, created["id"]) == stored
    assert (await fetch(service, other["id"]))["name"] == "shop"

    manual = await service.client.patch(
        f"{BASE}/{created['id']}", json={"mode": "manual", "url": None}, headers=headers
    )
    assert manual.status_code == 200, manual.text
    assert (manual.json()["mode"], manual.json()["url"]) == ("manual", None)
    back = await service.client.patch(
        f"{BASE}/{created['id']}", json={"mode": "webhook"}, headers=headers
    )
    assert field_named(problem(back, 422), "url"), "a webhook connector needs a url"


# --- deletion ---------------------------------------------------------------------------------


async def test_delete_without_history_removes_the_connector(service: Service, problem) -> None:
    gone = await create(service)
    kept = await create(service, name="shop", url="https://shop.internal/dsr")

    answer = await service.client.delete(f"{BASE}/{gone['id']}", headers=admin(service))

    assert answer.status_code == 204, answer.text
    problem(await service.client.get(f"{BASE}/{gone['id']}", headers=admin(service)), 404)
    assert [c["id"] for c in await listed(service)] == [kept["id"]]
    assert [c["id"] for c in await listed(service, include_deleted=True)] == [kept["id"]]
    again = await service.client.delete(f"{BASE}/{gone['id']}", headers=admin(service))
    problem(again, 404)


@pytest.mark.parametrize("settings_overrides", [FAST_RETRIES])
async def test_delete_with_history_keeps_it_disabled_and_stops_fan_out(
    service: Service, farm: ConnectorFarm
) -> None:
    shop = await register(service, farm, "shop", answers())
    first = await service.file_verified()
    await drive(service, farm)
    assert len(farm.calls_to("shop")) == 1
    service.clock.advance(minutes=1)

    answer = await service.client.delete(f"{BASE}/{shop['id']}", headers=admin(service))

    assert answer.status_code == 204, answer.text
    kept = await fetch(service, shop["id"])
    assert kept["enabled"] is False
    assert kept["deleted_at"] is not None
    assert when(kept["deleted_at"]) == service.clock.now()
    assert kept["name"] == "shop"
    assert await listed(service) == []
    assert [c["id"] for c in await listed(service, include_deleted=True)] == [shop["id"]]
    history = await detail(service, first["id"])
    assert [(j["connector_name"], j["status"]) for j in history["jobs"]] == [("shop", "succeeded")]

    second = await service.file_verified({"type": "access", "subject": {"email": "bo@example.org"}})
    await drive(service, farm)
    assert len(farm.calls_to("shop")) == 1, "a deleted connector was called"
    view = await detail(service, second["id"])
    assert (view["status"], view["jobs"]) == ("completed", [])


# --- secrets and audit --------------------------------------------------------------------------


async def test_rotate_secret_and_the_audit_trail(service: Service) -> None:
    start = await audit_count(service)
    created = await create(service)
    assert await audit_count(service) == start + 1
    service.clock.advance(minutes=1)

    answer = await service.client.post(
        f"{BASE}/{created['id']}/rotate-secret", headers=admin(service)
    )

    assert answer.status_code == 200, answer.text
    rotated = answer.json()
    assert rotated["id"] == created["id"]
    assert len(secret_key(rotated["signing_secret"])) == 32
    assert rotated["signing_secret"] != created["signing_secret"]
    assert rotated["secret_rotated_grace_until"] is not None
    assert when(rotated["secret_rotated_grace_until"]) > service.clock.now()
    assert "signing_secret" not in (await fetch(service, created["id"]))
    assert await audit_count(service) == start + 2

    deleted = await service.client.delete(f"{BASE}/{created['id']}", headers=admin(service))
    assert deleted.status_code == 204, deleted.text
    assert await audit_count(service) == start + 3

    events = await rows(service, "SELECT actor, action, details FROM audit_event ORDER BY seq")
    mine = [e for e in events if json.loads(e["details"]).get("connector_id") == created["id"]]
    assert [e["action"] for e in mine] == [
        "connector.created",
        "connector.secret_rotated",
        "connector.deleted",
    ]
    assert {e["actor"] for e in mine} == {"staff:alice"}
    for event in events:
        for secret in (created["signing_secret"], rotated["signing_secret"]):
            assert secret.removeprefix("whsec_") not in event["details"]


@pytest.mark.parametrize("settings_overrides", [FAST_RETRIES])
async def test_after_rotation_calls_carry_both_signatures_until_the_grace_ends(
    service: Service, farm: ConnectorFarm
) -> None:
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    service.runtime.http.event_hooks["request"].append(keep)
    shop = await register(service, farm, "shop", answers())
    old = shop["signing_secret"]
    answer = await service.client.post(f"{BASE}/{shop['id']}/rotate-secret", headers=admin(service))
    assert answer.status_code == 200, answer.text
    new = answer.json()["signing_secret"]

    farm.secrets["shop"] = new  # the farm checks each call with this secret
    first = await service.file_verified()
    await drive(service, farm)
    signatures = farm.calls_to("shop")[-1].headers["webhook-signature"].split(" ")
    assert len(signatures) == 2, signatures
    assert all(s.startswith("v1,") for s in signatures)
    assert farm.calls_to("shop")[-1].signature_valid, "the new secret does not verify the call"
    call = sent[-1]
    assert str(call.url) == farm.url("shop")
    Webhook(new).verify(call.content, dict(call.headers))
    Webhook(old).verify(call.content, dict(call.headers))
    assert (await detail(service, first["id"]))["status"] == "completed"

    # A connector not yet switched over may still call back signing with the old secret.
    farm.secrets["shop"] = old
    farm.behaviours["shop"] = calls_back()
    second = await service.file_verified({"type": "access", "subject": {"email": "bo@example.org"}})
    await drive(service, farm)
    assert farm.calls_to("shop")[-1].signature_valid
    assert [a.status_code for a in farm.callback_answers] == [200]
    assert (await detail(service, second["id"]))["status"] == "completed"

    # Once the grace period is over, only the new secret signs.
    service.clock.advance(hours=service.settings.secret_grace_hours + 1)
    assert (await fetch(service, shop["id"]))["secret_rotated_grace_until"] is None
    farm.behaviours["shop"] = answers()
    await service.file_verified({"type": "access", "subject": {"email": "cy@example.org"}})
    await drive(service, farm)
    call = sent[-1]
    assert len(call.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(call.content, dict(call.headers))
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(call.content, dict(call.headers))


# --- access -------------------------------------------------------------------------------------


def routes(connector_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("POST", BASE, CRM),
        ("GET", BASE, None),
        ("GET", f"{BASE}/{connector_id}", None),
        ("PATCH", f"{BASE}/{connector_id}", {"timeout_s": 20}),
        ("POST", f"{BASE}/{connector_id}/rotate-secret", None),
        ("DELETE", f"{BASE}/{connector_id}", None),
    ]


async def test_every_registry_route_needs_the_connectors_scope(service: Service, problem) -> None:
    created = await create(service, name="existing")
    forbidden = service.staff("requests:read", "requests:write")
    for method, path, body in routes(created["id"]):
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer not-a-jwt"}, 401),
            (forbidden, 403),
        ):
            answer = await service.client.request(method, path, json=body, headers=headers)
            problem(answer, status)
            assert "signing_secret" not in answer.text, (method, path)
    unchanged = await fetch(service, created["id"])
    assert {k: v for k, v in created.items() if k != "signing_secret"} == unchanged
    assert [c["name"] for c in await listed(service)] == ["existing"]


async def test_unknown_connector_is_404(service: Service, problem) -> None:
    headers = admin(service)
    for connector_id in ("con_nope", "x" * 200):
        for method, path, body in routes(connector_id)[2:]:
            answer = await service.client.request(method, path, json=body, headers=headers)
            problem(answer, 404)
