"""JWT verification shared by staff tokens and trusted intake assertions.

A token's header names its algorithm and key, and both are attacker-controlled, so nothing in
the header is trusted until the signature checks out:

- the algorithm allow-list comes from configuration, not from the token: HS256 only when a
  shared secret is configured, RS256/ES256 only when a JWK set is. A token asking for ``none``,
  HS384, or HS256 against a public key (the classic key-confusion attack) is refused before
  any key is touched;
- every ``jose.jwt.decode`` call gets exactly one algorithm and an already-built key object;
- ``exp`` is required; ``iss`` and ``aud`` are required and checked when configured.

Failures are a 401 with one generic detail that never echoes the token, except that an
unreachable identity provider is a 503: the caller's token may be fine, we just cannot tell.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import JOSEError

from app.errors import Unauthorized, Unavailable

logger = logging.getLogger(__name__)

INVALID_TOKEN = "invalid or expired token"
UNREACHABLE = "the identity provider's key set cannot be fetched"
# Larger than any sane bearer token; refusing early keeps base64/JSON parsing of junk cheap.
MAX_TOKEN_BYTES = 16 * 1024
VERIFIED_TTL_SECONDS = 60.0
VERIFIED_CACHE_SIZE = 4096

SYMMETRIC_ALGORITHMS = frozenset({"HS256"})
# The key type each asymmetric algorithm needs: a JWK of another type is never used with it.
ASYMMETRIC_KEY_TYPES: Mapping[str, str] = {"RS256": "RSA", "ES256": "EC"}


class JwksCache:
    """An identity provider's JWK set, fetched lazily and kept for ``ttl_seconds``.

    Providers rotate keys by publishing the new one before signing with it, so a token whose
    ``kid`` we do not know triggers one refetch; refetches are spaced by at least
    ``min_refresh_seconds`` so that a flood of tokens with made-up ``kid`` values cannot turn
    us into a denial-of-service amplifier against the provider.
    """

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        ttl_seconds: float = 300,
        min_refresh_seconds: float = 30,
        timeout_seconds: float = 5,
    ) -> None:
        self.url = url
        self._client = client
        self._ttl = ttl_seconds
        self._min_refresh = min_refresh_seconds
        self._timeout = timeout_seconds
        self._keys: list[dict[str, Any]] | None = None
        self._fetched_at = 0.0
        self._failed_at = -float("inf")
        self._failure_backoff = min(min_refresh_seconds, 5.0)
        # One fetch at a time: concurrent requests after expiry wait for it instead of
        # each hitting the provider.
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> dict[str, Any]:
        """The signing JWK for ``kid`` (or the only key, when the token names none).

        Raises ``Unauthorized`` for an unknown key and ``Unavailable`` when the set cannot be
        fetched.
        """
        if self._keys is None or self._age() >= self._ttl:
            await self._refresh(stale_after=self._ttl)
        key = self._find(kid)
        if key is None and kid is not None and self._age() >= self._min_refresh:
            await self._refresh(stale_after=self._min_refresh)
            key = self._find(kid)
        if key is None:
            raise Unauthorized(INVALID_TOKEN)
        return key

    def _age(self) -> float:
        return time.monotonic() - self._fetched_at

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        keys = self._keys or []
        if kid is None:
            # Without a kid we can only be sure when there is nothing to choose from.
            return keys[0] if len(keys) == 1 else None
        return next((key for key in keys if key.get("kid") == kid), None)

    async def _refresh(self, *, stale_after: float) -> None:
        async with self._lock:
            # Another request may have refreshed while we waited for the lock.
            if self._keys is not None and self._age() < stale_after:
                return
            # While the provider is down, requests queued behind the lock fail fast instead of
            # each waiting out its own timeout.
            if time.monotonic() - self._failed_at < self._failure_backoff:
                raise Unavailable(UNREACHABLE)
            try:
                keys = await self._fetch()
            except Unavailable:
                self._failed_at = time.monotonic()
                raise
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def _fetch(self) -> list[dict[str, Any]]:
        try:
            response = await self._client.get(
                self.url, timeout=self._timeout, headers={"Accept": "application/json"}
            )
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning(
                "security.jwks_fetch_failed", extra={"url": self.url, "error": type(exc).__name__}
            )
            raise Unavailable(UNREACHABLE) from None
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            logger.warning("security.jwks_malformed", extra={"url": self.url})
            raise Unavailable(UNREACHABLE)
        # Encryption keys are not for checking signatures.
        return [key for key in keys if isinstance(key, dict) and key.get("use", "sig") == "sig"]


@dataclass(frozen=True)
class JwtVerifier:
    """Checks a bearer token and returns its claims, or raises a 401 (503 if the provider is
    unreachable)."""

    secret: str | None = field(repr=False)
    jwks: JwksCache | None
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: int = 30
    _hmac_key: Key | None = field(init=False, repr=False, compare=False, default=None)
    # Claims of tokens already verified, by the token's digest: a staff client sends the
    # same token with every request, and checking it (header and payload decoding, HMAC or
    # signature, claims) cost more than many of the requests it guards.
    _verified: dict[bytes, tuple[float, dict[str, Any]]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        # Built once; an empty string counts as "not configured", never as an empty HMAC key.
        if self.secret:
            object.__setattr__(self, "_hmac_key", jwk.construct(self.secret, "HS256"))

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms this configuration accepts; the token does not get a say."""
        allowed: set[str] = set()
        if self._hmac_key is not None:
            allowed |= SYMMETRIC_ALGORITHMS
        if self.jwks is not None:
            allowed |= ASYMMETRIC_KEY_TYPES.keys()
        return frozenset(allowed)

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature, algorithm, expiry, issuer and audience hold.

        A token that verified is remembered until its ``exp`` (at most ``VERIFIED_TTL_SECONDS``,
        so a key withdrawn from the provider's set stops working within that time). Only
        exactly the same token string hits the cache, and only after the full check passed
        once; the cache is bounded and entries are never renewed."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            return await self._verify(token)  # refused there, with the usual answers
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(digest)
        now = time.time()
        if cached is not None:
            if now < cached[0]:
                return dict(cached[1])
            self._verified.pop(digest, None)
        claims = await self._verify(token)
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()  # crude but bounded; a full cache is rare
            self._verified[digest] = (min(float(exp), now + VERIFIED_TTL_SECONDS), dict(claims))
        return claims

    async def _verify(self, token: str) -> dict[str, Any]:
        allowed = self.algorithms
        if not allowed:
            raise Unauthorized("no token issuer is configured")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized(INVALID_TOKEN)
        try:
            header = jwt.get_unverified_header(token)
        except (JOSEError, ValueError, TypeError):
            raise Unauthorized(INVALID_TOKEN) from None
        alg = header.get("alg")
        kid = header.get("kid")
        if not isinstance(alg, str) or alg not in allowed:
            raise Unauthorized(INVALID_TOKEN)
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized(INVALID_TOKEN)
        key: Key
        if alg in SYMMETRIC_ALGORITHMS:
            # ``allowed`` has HMAC algorithms only when the key is set; fail closed regardless.
            if self._hmac_key is None:
                raise Unauthorized(INVALID_TOKEN)
            key = self._hmac_key
        else:
            key = await self._public_key(alg, kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self.issuer or None,
                audience=self.audience or None,
                options={
                    "require_exp": True,
                    "require_iss": bool(self.issuer),
                    "require_aud": bool(self.audience),
                    # Without a configured audience there is nothing to compare ``aud`` with.
                    "verify_aud": bool(self.audience),
                    "leeway": self.leeway_seconds,
                },
            )
        except (JOSEError, ValueError, TypeError):
            raise Unauthorized(INVALID_TOKEN) from None
        return claims

    async def _public_key(self, alg: str, kid: str | None) -> Key:
        assert self.jwks is not None  # only reachable when RS256/ES256 are allowed
        data = await self.jwks.key_for(kid)
        # A JWK pinned to another algorithm, or of the wrong type, must not verify this token.
        if data.get("kty") != ASYMMETRIC_KEY_TYPES[alg] or data.get("alg", alg) != alg:
            raise Unauthorized(INVALID_TOKEN)
        try:
            return jwk.construct(data, alg)
        except (JOSEError, ValueError, TypeError):
            raise Unauthorized(INVALID_TOKEN) from None
