"""JwtVerifier and JwksCache against hand-made tokens and a real JWKS server on 127.0.0.1.

The attacks worth a test are the ones where the token chooses how it is checked: ``alg: none``,
another HMAC variant, and HS256 signed with the provider's public key (key confusion).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.errors import Unauthorized, Unavailable
from app.security.jwt import JwksCache, JwtVerifier

SECRET = "s" * 48
ISSUER = "https://idp.example"
AUDIENCE = "dsr-staff"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- keys and tokens ----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    kid: str
    alg: str
    private_pem: bytes
    public_pem: bytes

    @property
    def public_jwk(self) -> dict[str, Any]:
        data = jwk.construct(self.public_pem.decode(), self.alg).to_dict()
        return {**data, "kid": self.kid, "use": "sig"}

    def sign(self, claims: dict[str, Any], *, kid: str | bool | None = True) -> str:
        headers = {} if kid is None else {"kid": self.kid if kid is True else kid}
        return jwt.encode(claims, self.private_pem.decode(), algorithm=self.alg, headers=headers)


def _pair(kid: str, alg: str, private: Any) -> KeyPair:
    return KeyPair(
        kid=kid,
        alg=alg,
        private_pem=private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        public_pem=private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return _pair("rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def rsa_key_next() -> KeyPair:
    return _pair("rsa-2", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ec_key() -> KeyPair:
    return _pair("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1()))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    # An hour: parametrised claims are made at collection, long before a slow run reaches them.
    return {"sub": "staff-1", "iat": now, "exp": now + 3600, **overrides}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = None) -> str:
    """A token built without a library, so that it can be as wrong as an attacker wants."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = b""
    if key is not None:
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


# --- a real JWKS server -------------------------------------------------------------------


@dataclass
class JwksServer:
    """Serves ``keys`` at ``url``; tests swap the keys and read how often they were fetched."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    fetches: int = 0

    def reset(self) -> None:
        self.keys, self.status, self.fetches = [], 200, 0

    async def endpoint(self, request: Request) -> JSONResponse:
        self.fetches += 1
        return JSONResponse({"keys": self.keys}, status_code=self.status)


@pytest.fixture(scope="module")
def jwks_server_module() -> Iterator[JwksServer]:
    state = JwksServer()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = Starlette(routes=[Route("/.well-known/jwks.json", state.endpoint)])
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", loop="asyncio", http="h11", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the JWKS test server did not start")
        time.sleep(0.01)
    state.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def jwks_server(jwks_server_module: JwksServer) -> JwksServer:
    jwks_server_module.reset()
    return jwks_server_module


@pytest.fixture
def dead_url() -> str:
    """A URL on a port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks.json"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def jwks_verifier(
    url: str, http: httpx.AsyncClient, *, min_refresh_seconds: float = 30, **kw: Any
) -> JwtVerifier:
    cache = JwksCache(url, http, min_refresh_seconds=min_refresh_seconds)
    return JwtVerifier(secret=None, jwks=cache, **kw)


# --- HS256 --------------------------------------------------------------------------------


async def test_hs256_token_gives_its_claims() -> None:
    token = jwt.encode(claims(scope="requests:read"), SECRET, algorithm="HS256")

    result = await JwtVerifier(secret=SECRET, jwks=None).verify(token)

    assert result["sub"] == "staff-1"
    assert result["scope"] == "requests:read"


async def test_expired_token_is_refused_without_echoing_it() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256")

    with pytest.raises(Unauthorized) as caught:
        await JwtVerifier(secret=SECRET, jwks=None).verify(token)

    assert caught.value.detail == "invalid or expired token"
    assert token not in json.dumps(caught.value.to_problem())


async def test_clock_skew_within_leeway_is_tolerated() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256")

    result = await JwtVerifier(secret=SECRET, jwks=None, leeway_seconds=30).verify(token)

    assert result["sub"] == "staff-1"


async def test_token_without_exp_is_refused() -> None:
    token = jwt.encode({"sub": "staff-1"}, SECRET, algorithm="HS256")

    with pytest.raises(Unauthorized):
        await JwtVerifier(secret=SECRET, jwks=None).verify(token)


async def test_wrong_secret_is_refused() -> None:
    token = jwt.encode(claims(), "x" * 48, algorithm="HS256")

    with pytest.raises(Unauthorized):
        await JwtVerifier(secret=SECRET, jwks=None).verify(token)


async def test_alg_none_is_refused() -> None:
    token = hand_made({"alg": "none", "typ": "JWT"}, claims())
    assert token.endswith(".")

    with pytest.raises(Unauthorized):
        await JwtVerifier(secret=SECRET, jwks=None).verify(token)


async def test_hs384_is_refused_even_with_the_right_secret() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS384")

    with pytest.raises(Unauthorized):
        await JwtVerifier(secret=SECRET, jwks=None).verify(token)


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "",
        "a.b.c",
        "....",
        f"{b64url(b'not json')}.{b64url(b'{}')}.",
        f"{b64url(b'[1, 2]')}.{b64url(b'{}')}.",
        hand_made({"alg": "HS256", "kid": 7}, claims(), SECRET.encode()),
        hand_made({"typ": "JWT"}, claims(), SECRET.encode()),
        "x" * 20_000,
    ],
)
async def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        await JwtVerifier(secret=SECRET, jwks=None).verify(token)

    assert caught.value.detail == "invalid or expired token"


async def test_hand_made_hs256_is_accepted_so_the_refusals_above_mean_something() -> None:
    token = hand_made({"alg": "HS256", "typ": "JWT"}, claims(), SECRET.encode())

    assert (await JwtVerifier(secret=SECRET, jwks=None).verify(token))["sub"] == "staff-1"


async def test_payload_that_is_not_an_object_is_refused() -> None:
    header = b64url(json.dumps({"alg": "HS256"}).encode())
    signing_input = f"{header}.{b64url(b'[1]')}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()

    with pytest.raises(Unauthorized):
        await JwtVerifier(secret=SECRET, jwks=None).verify(f"{signing_input}.{b64url(signature)}")


async def test_nothing_configured_refuses_every_token() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")

    with pytest.raises(Unauthorized) as caught:
        await JwtVerifier(secret=None, jwks=None).verify(token)

    assert caught.value.detail == "no token issuer is configured"


async def test_empty_secret_counts_as_not_configured() -> None:
    token = hand_made({"alg": "HS256"}, claims(), b"")

    with pytest.raises(Unauthorized) as caught:
        await JwtVerifier(secret="", jwks=None).verify(token)

    assert caught.value.detail == "no token issuer is configured"


async def test_rs256_token_is_refused_when_only_a_secret_is_configured(rsa_key: KeyPair) -> None:
    with pytest.raises(Unauthorized):
        await JwtVerifier(secret=SECRET, jwks=None).verify(rsa_key.sign(claims()))


async def test_secret_does_not_show_in_repr() -> None:
    assert SECRET not in repr(JwtVerifier(secret=SECRET, jwks=None))


@pytest.mark.parametrize(
    ("token_claims", "accepted"),
    [
        (claims(iss=ISSUER, aud=AUDIENCE), True),
        (claims(iss=ISSUER, aud=[AUDIENCE, "other"]), True),
        (claims(iss="https://evil.example", aud=AUDIENCE), False),
        (claims(iss=ISSUER, aud="other"), False),
        (claims(aud=AUDIENCE), False),
        (claims(iss=ISSUER), False),
    ],
)
async def test_issuer_and_audience_are_required_when_configured(
    token_claims: dict[str, Any], accepted: bool
) -> None:
    verifier = JwtVerifier(secret=SECRET, jwks=None, issuer=ISSUER, audience=AUDIENCE)
    token = jwt.encode(token_claims, SECRET, algorithm="HS256")

    if accepted:
        assert (await verifier.verify(token))["sub"] == "staff-1"
    else:
        with pytest.raises(Unauthorized):
            await verifier.verify(token)


async def test_audience_in_token_is_ignored_when_none_is_configured() -> None:
    token = jwt.encode(claims(aud="anything"), SECRET, algorithm="HS256")

    assert (await JwtVerifier(secret=SECRET, jwks=None).verify(token))["aud"] == "anything"


# --- RS256 / ES256 through a JWKS ---------------------------------------------------------


async def test_rs256_token_verifies_against_the_jwks(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk]
    verifier = jwks_verifier(jwks_server.url, http, issuer=ISSUER, audience=AUDIENCE)

    result = await verifier.verify(rsa_key.sign(claims(iss=ISSUER, aud=AUDIENCE)))

    assert result["sub"] == "staff-1"


async def test_es256_token_verifies_against_the_jwks(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair, ec_key: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk, ec_key.public_jwk]
    verifier = jwks_verifier(jwks_server.url, http)

    assert (await verifier.verify(ec_key.sign(claims())))["sub"] == "staff-1"
    assert (await verifier.verify(rsa_key.sign(claims())))["sub"] == "staff-1"
    assert jwks_server.fetches == 1  # the set is cached between tokens


async def test_wrong_issuer_or_audience_is_refused_with_jwks(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk]
    verifier = jwks_verifier(jwks_server.url, http, issuer=ISSUER, audience=AUDIENCE)

    with pytest.raises(Unauthorized):
        await verifier.verify(rsa_key.sign(claims(iss="https://evil.example", aud=AUDIENCE)))
    with pytest.raises(Unauthorized):
        await verifier.verify(rsa_key.sign(claims(iss=ISSUER, aud="someone-else")))


async def test_token_signed_by_another_key_with_a_known_kid_is_refused(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair, rsa_key_next: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk]
    verifier = jwks_verifier(jwks_server.url, http)

    with pytest.raises(Unauthorized):
        await verifier.verify(rsa_key_next.sign(claims(), kid=rsa_key.kid))


async def test_key_type_must_match_the_algorithm(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair, ec_key: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk]
    verifier = jwks_verifier(jwks_server.url, http)

    with pytest.raises(Unauthorized):
        await verifier.verify(ec_key.sign(claims(), kid=rsa_key.kid))


async def test_hs256_forged_with_the_public_key_is_refused(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair
) -> None:
    """Key confusion: a library that lets the token pick HS256 would use the public PEM, which
    everyone has, as the HMAC secret."""
    jwks_server.keys = [rsa_key.public_jwk]
    verifier = jwks_verifier(jwks_server.url, http)
    forged = hand_made({"alg": "HS256", "kid": rsa_key.kid}, claims(), rsa_key.public_pem)

    with pytest.raises(Unauthorized):
        await verifier.verify(forged)

    assert jwks_server.fetches == 0  # refused on the algorithm alone


async def test_alg_none_is_refused_with_jwks(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk]

    with pytest.raises(Unauthorized):
        await jwks_verifier(jwks_server.url, http).verify(
            hand_made({"alg": "none", "kid": rsa_key.kid}, claims())
        )


async def test_both_configured_accepts_both_but_each_with_its_own_key(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk]
    verifier = JwtVerifier(secret=SECRET, jwks=JwksCache(jwks_server.url, http))

    assert (await verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256")))["sub"]
    assert (await verifier.verify(rsa_key.sign(claims())))["sub"]
    with pytest.raises(Unauthorized):
        await verifier.verify(hand_made({"alg": "HS256"}, claims(), rsa_key.public_pem))


async def test_key_rotation_refetches_the_set_for_an_unknown_kid(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair, rsa_key_next: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk]
    verifier = jwks_verifier(jwks_server.url, http, min_refresh_seconds=0)
    assert (await verifier.verify(rsa_key.sign(claims())))["sub"] == "staff-1"

    jwks_server.keys = [rsa_key.public_jwk, rsa_key_next.public_jwk]
    assert (await verifier.verify(rsa_key_next.sign(claims())))["sub"] == "staff-1"

    assert jwks_server.fetches == 2


async def test_unknown_kid_refetches_at_most_once_per_interval(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair, rsa_key_next: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk]
    verifier = jwks_verifier(jwks_server.url, http, min_refresh_seconds=60)
    await verifier.verify(rsa_key.sign(claims()))

    for _ in range(3):
        with pytest.raises(Unauthorized):
            await verifier.verify(rsa_key_next.sign(claims()))

    assert jwks_server.fetches == 1


async def test_expired_cache_is_refetched(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk]
    cache = JwksCache(jwks_server.url, http, ttl_seconds=0)

    await cache.key_for(rsa_key.kid)
    await cache.key_for(rsa_key.kid)

    assert jwks_server.fetches == 2


async def test_token_without_kid_uses_the_only_key(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair, rsa_key_next: KeyPair
) -> None:
    jwks_server.keys = [rsa_key.public_jwk]
    verifier = jwks_verifier(jwks_server.url, http)
    assert (await verifier.verify(rsa_key.sign(claims(), kid=None)))["sub"] == "staff-1"

    jwks_server.keys = [rsa_key.public_jwk, rsa_key_next.public_jwk]
    ambiguous = jwks_verifier(jwks_server.url, http)
    with pytest.raises(Unauthorized):
        await ambiguous.verify(rsa_key.sign(claims(), kid=None))


async def test_encryption_keys_in_the_set_are_not_used(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair
) -> None:
    jwks_server.keys = [{**rsa_key.public_jwk, "use": "enc"}]

    with pytest.raises(Unauthorized):
        await jwks_verifier(jwks_server.url, http).verify(rsa_key.sign(claims()))


async def test_jwks_server_down_is_unavailable(dead_url: str, http: httpx.AsyncClient) -> None:
    token = hand_made({"alg": "RS256", "kid": "k"}, claims())

    with pytest.raises(Unavailable) as caught:
        await jwks_verifier(dead_url, http).verify(token)

    assert caught.value.status == 503
    assert caught.value.detail == "the identity provider's key set cannot be fetched"
    assert caught.value.headers["Retry-After"]


@pytest.mark.parametrize("status", [500, 404])
async def test_jwks_server_error_is_unavailable(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair, status: int
) -> None:
    jwks_server.status = status

    with pytest.raises(Unavailable):
        await jwks_verifier(jwks_server.url, http).verify(rsa_key.sign(claims()))


async def test_failed_fetch_is_not_retried_by_every_waiting_request(
    jwks_server: JwksServer, http: httpx.AsyncClient, rsa_key: KeyPair
) -> None:
    jwks_server.status = 500
    verifier = jwks_verifier(jwks_server.url, http, min_refresh_seconds=30)

    for _ in range(3):
        with pytest.raises(Unavailable):
            await verifier.verify(rsa_key.sign(claims()))

    assert jwks_server.fetches == 1
