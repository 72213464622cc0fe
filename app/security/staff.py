"""Staff authentication: bearer JWTs with an OAuth 2 ``scope`` claim, checked per route.

Routes declare what they need and receive the caller::

    StaffReader = Annotated[StaffPrincipal, Depends(require_scopes("requests:read"))]

    @router.get("/v1/admin/requests")
    async def list_requests(staff: StaffReader) -> ...: ...

Tokens come from the configured shared secret (HS256, ``mint_staff_token`` makes them, e.g.
for the CLI) or from an OpenID provider's JWK set (RS256/ES256). The verifiers are built once
per application and kept on ``app.state`` so that the provider's key set is cached across
requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jose import jwt

from app.errors import Forbidden, Unauthorized
from app.security.jwt import JwksCache, JwtVerifier

SCOPES: frozenset[str] = frozenset(
    {"requests:read", "requests:write", "connectors:write", "audit:read"}
)

_MISSING = object()

# Declares the scheme in the OpenAPI document; the errors stay ours (problem+json), hence
# auto_error=False.
staff_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="staffBearer",
    description=(
        "A staff JWT with `sub`, `exp` and a space-separated `scope` claim "
        f"({', '.join(sorted(SCOPES))})."
    ),
)


@dataclass(frozen=True)
class StaffPrincipal:
    """The staff member behind a request, as the token describes them."""

    subject: str
    scopes: frozenset[str]


def mint_staff_token(
    *,
    secret: str,
    subject: str,
    scopes: Iterable[str],
    ttl_seconds: int = 3600,
    now: datetime | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """An HS256 staff token, for the CLI and tests (production may use an OpenID provider).

    ``issuer``/``audience`` are only needed when the service is configured to check them.
    """
    wanted = set(scopes)
    unknown = sorted(wanted - SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(unknown)}")
    if not secret:
        raise ValueError("a staff token needs a secret")
    if not subject:
        raise ValueError("a staff token needs a subject")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    issued = now or datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": int(issued.timestamp()),
        "exp": int((issued + timedelta(seconds=ttl_seconds)).timestamp()),
        "scope": " ".join(sorted(wanted)),
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    token: str = jwt.encode(claims, secret, algorithm="HS256")
    return token


def staff_verifier(app_state: Any) -> JwtVerifier:
    """The staff token verifier for this application, built on first use.

    A JWKS URL means the provider issues staff tokens "instead" of us: a development secret
    that was only generated (not configured) is then not accepted as well. A secret configured
    on purpose next to a JWKS URL keeps working (e.g. for CLI tokens during a migration).
    """
    cached = getattr(app_state, "staff_verifier", None)
    if isinstance(cached, JwtVerifier):
        return cached
    settings = app_state.settings
    secret = settings.staff_jwt_secret or None
    if settings.staff_jwks_url and "staff_jwt_secret" in _generated(settings):
        secret = None
    verifier = _build_verifier(
        app_state,
        secret=secret,
        jwks_url=settings.staff_jwks_url,
        issuer=settings.staff_jwt_issuer,
        audience=settings.staff_jwt_audience,
    )
    app_state.staff_verifier = verifier
    return verifier


def intake_verifier(app_state: Any) -> JwtVerifier | None:
    """The verifier for trusted intake systems' assertions, or None when none is trusted."""
    cached = getattr(app_state, "intake_verifier", _MISSING)
    if cached is None or isinstance(cached, JwtVerifier):
        return cached
    settings = app_state.settings
    verifier: JwtVerifier | None = None
    if settings.intake_jwt_secret or settings.intake_jwks_url:
        verifier = _build_verifier(
            app_state,
            secret=settings.intake_jwt_secret or None,
            jwks_url=settings.intake_jwks_url,
            issuer=settings.intake_jwt_issuer,
            audience=settings.intake_jwt_audience,
        )
    app_state.intake_verifier = verifier
    return verifier


def require_scopes(*scopes: str) -> Callable[..., Awaitable[StaffPrincipal]]:
    """A FastAPI dependency that admits a staff token holding every one of ``scopes``.

    401 without a valid bearer token, 403 naming the missing scope otherwise. Unknown scope
    names fail at import time, so a typo cannot silently lock a route.
    """
    needed = frozenset(scopes)
    unknown = sorted(needed - SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(unknown)}")

    async def staff_principal(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(staff_bearer),
    ) -> StaffPrincipal:
        if credentials is None:
            raise Unauthorized("a staff bearer token is required")
        claims = await staff_verifier(request.app.state).verify(credentials.credentials)
        principal = _principal_from(claims)
        missing = sorted(needed - principal.scopes)
        if len(missing) == 1:
            raise Forbidden(
                f"this action needs the scope {missing[0]}", extra={"missing_scopes": missing}
            )
        if missing:
            raise Forbidden(
                f"this action needs the scopes {', '.join(missing)}",
                extra={"missing_scopes": missing},
            )
        return principal

    return staff_principal


def _principal_from(claims: dict[str, Any]) -> StaffPrincipal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("invalid or expired token")
    granted: set[str] = set()
    # OAuth 2 says ``scope`` is a space-separated string; some providers (Azure AD, Okta) use
    # ``scp``, as a list or a string. Take both, in either form.
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            granted.update(value.split())
        elif isinstance(value, list):
            granted.update(item for item in value if isinstance(item, str))
    return StaffPrincipal(subject=subject, scopes=frozenset(granted))


def _generated(settings: Any) -> frozenset[str]:
    return frozenset(getattr(settings, "generated_secrets", frozenset()))


def _build_verifier(
    app_state: Any, *, secret: str | None, jwks_url: str, issuer: str, audience: str
) -> JwtVerifier:
    jwks = JwksCache(jwks_url, app_state.http) if jwks_url else None
    return JwtVerifier(secret=secret, jwks=jwks, issuer=issuer or None, audience=audience or None)
