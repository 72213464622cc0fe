"""The staff dependency at the HTTP level: a tiny app with routes behind ``require_scopes``,
rendering errors the way the real app does (problem+json)."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from jose import jwt

from app.config import Settings
from app.errors import AppError
from app.security.staff import (
    SCOPES,
    StaffPrincipal,
    intake_verifier,
    mint_staff_token,
    require_scopes,
    staff_verifier,
)

SECRET = "staff-secret-" + "x" * 40
ISSUER = "https://dsr.example"
AUDIENCE = "dsr-admin"

pytestmark = pytest.mark.anyio

ReadingStaff = Annotated[StaffPrincipal, Depends(require_scopes("requests:read"))]
AuditingWriter = Annotated[StaffPrincipal, Depends(require_scopes("requests:write", "audit:read"))]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"env": "test", "staff_jwt_secret": SECRET, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def problem_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return JSONResponse(
        exc.to_problem(),
        status_code=exc.status,
        headers=exc.headers,
        media_type="application/problem+json",
    )


def build_app(config: Settings) -> FastAPI:
    app = FastAPI()
    app.state.settings = config
    app.state.http = httpx.AsyncClient()
    app.add_exception_handler(AppError, problem_handler)

    @app.get("/v1/admin/requests")
    async def list_requests(staff: ReadingStaff) -> dict[str, Any]:
        """Reads need requests:read."""
        return {"subject": staff.subject, "scopes": sorted(staff.scopes)}

    @app.post("/v1/admin/audit/seal")
    async def seal(staff: AuditingWriter) -> dict[str, Any]:
        """Needs two scopes at once."""
        return {"subject": staff.subject}

    return app


@asynccontextmanager
async def serve(config: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(config)
    transport = httpx.ASGITransport(app)
    async with (
        app.state.http,
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token(*scopes: str, **kw: Any) -> str:
    return mint_staff_token(secret=SECRET, subject="staff-1", scopes=scopes, **kw)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    return body


# --- minting ------------------------------------------------------------------------------


def test_minted_token_carries_sub_iat_exp_and_space_separated_scope() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

    minted = mint_staff_token(
        secret=SECRET,
        subject="ana",
        scopes=["requests:write", "requests:read"],
        ttl_seconds=60,
        now=now,
    )

    header = jwt.get_unverified_header(minted)
    claims = jwt.get_unverified_claims(minted)
    assert header["alg"] == "HS256"
    assert claims == {
        "sub": "ana",
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=60)).timestamp()),
        "scope": "requests:read requests:write",
    }


def test_minting_an_unknown_scope_fails() -> None:
    with pytest.raises(ValueError, match="requests:delete"):
        mint_staff_token(secret=SECRET, subject="ana", scopes=["requests:delete"])


def test_minting_without_a_secret_fails() -> None:
    with pytest.raises(ValueError, match="secret"):
        mint_staff_token(secret="", subject="ana", scopes=[])


def test_requiring_an_unknown_scope_fails_at_definition() -> None:
    with pytest.raises(ValueError, match="requests:reed"):
        require_scopes("requests:reed")


def test_scopes_are_the_contract_ones() -> None:
    assert frozenset({"requests:read", "requests:write", "connectors:write", "audit:read"}) == (
        SCOPES
    )


# --- the dependency over HTTP -------------------------------------------------------------


async def test_valid_token_reaches_the_route() -> None:
    async with serve(settings()) as client:
        response = await client.get(
            "/v1/admin/requests", headers=bearer(token("requests:read", "audit:read"))
        )

    assert response.status_code == 200
    assert response.json() == {"subject": "staff-1", "scopes": ["audit:read", "requests:read"]}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic c3RhZmY6cGFzcw=="},
        {"Authorization": f"Token {token('requests:read')}"},
    ],
)
async def test_missing_or_non_bearer_credentials_are_401(headers: dict[str, str]) -> None:
    async with serve(settings()) as client:
        response = await client.get("/v1/admin/requests", headers=headers)

    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_expired_token_is_401_and_not_echoed() -> None:
    expired = token("requests:read", now=datetime.now(UTC) - timedelta(hours=2))

    async with serve(settings()) as client:
        response = await client.get("/v1/admin/requests", headers=bearer(expired))

    body = assert_problem(response, 401)
    assert body["detail"] == "invalid or expired token"
    assert expired not in response.text


async def test_token_signed_with_another_secret_is_401() -> None:
    forged = mint_staff_token(secret="y" * 48, subject="mallory", scopes=["requests:read"])

    async with serve(settings()) as client:
        response = await client.get("/v1/admin/requests", headers=bearer(forged))

    assert_problem(response, 401)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_alg_none_token_is_401() -> None:
    claims = {"sub": "mallory", "exp": int(time.time()) + 600, "scope": " ".join(SCOPES)}
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."

    async with serve(settings()) as client:
        response = await client.get("/v1/admin/requests", headers=bearer(unsigned))

    assert_problem(response, 401)


async def test_hs384_token_is_401() -> None:
    claims = {"sub": "staff-1", "exp": int(time.time()) + 600, "scope": "requests:read"}
    hs384 = jwt.encode(claims, SECRET, algorithm="HS384")

    async with serve(settings()) as client:
        response = await client.get("/v1/admin/requests", headers=bearer(hs384))

    assert_problem(response, 401)


async def test_garbage_token_is_401() -> None:
    async with serve(settings()) as client:
        response = await client.get("/v1/admin/requests", headers=bearer("not-a-jwt"))

    assert_problem(response, 401)


async def test_token_without_subject_is_401() -> None:
    claims = {"exp": int(time.time()) + 600, "scope": "requests:read"}

    async with serve(settings()) as client:
        response = await client.get(
            "/v1/admin/requests", headers=bearer(jwt.encode(claims, SECRET, algorithm="HS256"))
        )

    assert_problem(response, 401)


async def test_missing_scope_is_403_naming_it() -> None:
    async with serve(settings()) as client:
        response = await client.get("/v1/admin/requests", headers=bearer(token("requests:write")))

    body = assert_problem(response, 403)
    assert body["detail"] == "this action needs the scope requests:read"
    assert body["missing_scopes"] == ["requests:read"]


async def test_every_required_scope_is_needed() -> None:
    async with serve(settings()) as client:
        partial = await client.post("/v1/admin/audit/seal", headers=bearer(token("audit:read")))
        neither = await client.post("/v1/admin/audit/seal", headers=bearer(token("requests:read")))
        both = await client.post(
            "/v1/admin/audit/seal", headers=bearer(token("audit:read", "requests:write"))
        )

    assert assert_problem(partial, 403)["detail"] == "this action needs the scope requests:write"
    assert assert_problem(neither, 403)["detail"] == (
        "this action needs the scopes audit:read, requests:write"
    )
    assert both.status_code == 200


async def test_scp_list_claim_is_accepted() -> None:
    claims = {"sub": "okta-user", "exp": int(time.time()) + 600, "scp": ["requests:read"]}

    async with serve(settings()) as client:
        response = await client.get(
            "/v1/admin/requests", headers=bearer(jwt.encode(claims, SECRET, algorithm="HS256"))
        )

    assert response.status_code == 200
    assert response.json()["scopes"] == ["requests:read"]


async def test_issuer_and_audience_are_checked_when_configured() -> None:
    config = settings(staff_jwt_issuer=ISSUER, staff_jwt_audience=AUDIENCE)
    good = token("requests:read", issuer=ISSUER, audience=AUDIENCE)
    wrong_issuer = token("requests:read", issuer="https://evil.example", audience=AUDIENCE)
    wrong_audience = token("requests:read", issuer=ISSUER, audience="other")
    neither = token("requests:read")

    async with serve(config) as client:
        responses = [
            await client.get("/v1/admin/requests", headers=bearer(each))
            for each in (good, wrong_issuer, wrong_audience, neither)
        ]

    assert [response.status_code for response in responses] == [200, 401, 401, 401]


async def test_no_issuer_configured_is_401() -> None:
    async with serve(settings(staff_jwt_secret="")) as client:
        response = await client.get("/v1/admin/requests", headers=bearer(token("requests:read")))

    assert assert_problem(response, 401)["detail"] == "no token issuer is configured"


async def test_unreachable_identity_provider_is_503_with_retry_after() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    header = {"alg": "RS256", "kid": "k1"}
    claims = {"sub": "staff-1", "exp": int(time.time()) + 600}
    rs256_shaped = f"{_b64(header)}.{_b64(claims)}.c2ln"
    config = settings(staff_jwt_secret="", staff_jwks_url=f"http://127.0.0.1:{port}/jwks")

    async with serve(config) as client:
        response = await client.get("/v1/admin/requests", headers=bearer(rs256_shaped))

    body = assert_problem(response, 503)
    assert body["detail"] == "the identity provider's key set cannot be fetched"
    assert response.headers["retry-after"]


async def test_openapi_declares_the_staff_bearer_scheme() -> None:
    async with serve(settings()) as client:
        document = (await client.get("/openapi.json")).json()

    scheme = document["components"]["securitySchemes"]["staffBearer"]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    operation = document["paths"]["/v1/admin/requests"]["get"]
    assert operation["security"] == [{"staffBearer": []}]


# --- verifiers built from settings --------------------------------------------------------


class State:
    """Stands in for ``app.state`` (attributes set and read freely)."""


def app_state(config: Settings) -> Any:
    state = State()
    state.settings = config  # type: ignore[attr-defined]
    state.http = object()  # type: ignore[attr-defined]  # never called by these tests
    return state


def test_staff_verifier_is_built_once_per_app() -> None:
    state = app_state(settings(staff_jwt_issuer=ISSUER))

    verifier = staff_verifier(state)

    assert staff_verifier(state) is verifier
    assert verifier.secret == SECRET
    assert verifier.jwks is None
    assert verifier.issuer == ISSUER
    assert verifier.audience is None


def test_staff_verifier_uses_the_jwks_url() -> None:
    state = app_state(settings(staff_jwks_url="https://idp.example/jwks", staff_jwt_secret=""))

    verifier = staff_verifier(state)

    assert verifier.secret is None
    assert verifier.jwks is not None
    assert verifier.jwks.url == "https://idp.example/jwks"
    assert verifier.algorithms == frozenset({"RS256", "ES256"})


def test_generated_development_secret_is_not_accepted_next_to_a_jwks_url(
    tmp_path: Path,
) -> None:
    config = Settings(  # type: ignore[call-arg]
        _env_file=None,
        env="development",
        data_dir=tmp_path,
        staff_jwks_url="https://idp.example/jwks",
    ).ensure_secrets()
    assert config.staff_jwt_secret  # generated

    verifier = staff_verifier(app_state(config))

    assert verifier.secret is None
    assert verifier.algorithms == frozenset({"RS256", "ES256"})


def test_configured_secret_next_to_a_jwks_url_keeps_working() -> None:
    verifier = staff_verifier(app_state(settings(staff_jwks_url="https://idp.example/jwks")))

    assert verifier.algorithms == frozenset({"HS256", "RS256", "ES256"})


def test_intake_verifier_is_none_when_nothing_is_trusted() -> None:
    state = app_state(settings())

    assert intake_verifier(state) is None
    assert intake_verifier(state) is None


def test_intake_verifier_uses_the_intake_settings() -> None:
    state = app_state(
        settings(
            intake_jwt_secret="intake-" + "z" * 40,
            intake_jwt_issuer="https://shop.example",
            intake_jwt_audience="dsr-intake",
        )
    )

    verifier = intake_verifier(state)

    assert verifier is not None
    assert intake_verifier(state) is verifier
    assert verifier.secret == "intake-" + "z" * 40
    assert verifier.issuer == "https://shop.example"
    assert verifier.audience == "dsr-intake"
    assert staff_verifier(state) is not verifier
