"""The committed OpenAPI document is the app's: regenerate with `dsr openapi --write`."""

from __future__ import annotations

import json
from pathlib import Path

from app.cli import render_openapi

COMMITTED = Path(__file__).parent.parent / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    assert COMMITTED.exists(), "openapi/openapi.json is missing: run `dsr openapi --write`"
    assert json.loads(COMMITTED.read_text()) == json.loads(render_openapi()), (
        "openapi/openapi.json differs from the app: run `dsr openapi --write` and commit it"
    )


def test_every_contract_path_is_documented() -> None:
    paths = json.loads(render_openapi())["paths"]
    for path in (
        "/v1/requests",
        "/v1/requests/{request_id}",
        "/v1/requests/{request_id}/verification",
        "/v1/requests/{request_id}/verification/resend",
        "/v1/requests/{request_id}/identity-document",
        "/v1/requests/{request_id}/export",
        "/v1/requests/{request_id}/cancel",
        "/v1/admin/requests",
        "/v1/admin/requests/{request_id}",
        "/v1/admin/requests/{request_id}/approve",
        "/v1/admin/requests/{request_id}/reject",
        "/v1/admin/requests/{request_id}/cancel",
        "/v1/admin/requests/{request_id}/extend",
        "/v1/admin/requests/{request_id}/identity/approve",
        "/v1/admin/requests/{request_id}/identity/reject",
        "/v1/admin/requests/{request_id}/jobs/{job_id}/retry",
        "/v1/admin/requests/{request_id}/jobs/{job_id}/complete",
        "/v1/admin/deadlines/preview",
        "/v1/admin/stats",
        "/v1/admin/audit/verify",
    ):
        assert path in paths, path
