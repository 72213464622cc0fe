"""The verified-token cache: the same token is not checked twice before its ``exp``, and
nothing but that exact, already verified token is ever answered from it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from jose import jwt

from app.errors import Unauthorized
from app.security import jwt as jwt_module
from app.security.jwt import JwtVerifier

SECRET = "s" * 48

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _token(**overrides: Any) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": "staff-1", "iat": now, "exp": now + 300, "scope": "requests:read", **overrides},
        SECRET,
        algorithm="HS256",
    )


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = jwt_module.jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt_module.jwt, "decode", counting)
    return calls


async def test_the_same_token_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = _count_decodes(monkeypatch)
    verifier = JwtVerifier(secret=SECRET, jwks=None)
    token = _token()

    first = await verifier.verify(token)
    second = await verifier.verify(token)

    assert first == second
    assert second["sub"] == "staff-1"
    assert len(decodes) == 1


async def test_a_cached_answer_cannot_be_altered_by_its_caller() -> None:
    verifier = JwtVerifier(secret=SECRET, jwks=None)
    token = _token()
    (await verifier.verify(token))["scope"] = "requests:write audit:read"

    assert (await verifier.verify(token))["scope"] == "requests:read"


async def test_a_tampered_copy_of_a_cached_token_is_refused() -> None:
    verifier = JwtVerifier(secret=SECRET, jwks=None)
    token = _token()
    await verifier.verify(token)
    header, payload, signature = token.split(".")
    forged = ".".join(
        [header, payload, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")]
    )

    with pytest.raises(Unauthorized):
        await verifier.verify(forged)


async def test_a_token_past_its_exp_is_checked_again_and_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verifier = JwtVerifier(secret=SECRET, jwks=None, leeway_seconds=0)
    now = int(time.time())
    token = _token(exp=now + 2)
    await verifier.verify(token)
    decodes = _count_decodes(monkeypatch)
    # Later than exp, for the cache and for the check itself.
    later = time.time() + 5
    monkeypatch.setattr(jwt_module.time, "time", lambda: later)
    monkeypatch.setattr(jwt_module.jwt, "decode", _expired_decode)

    with pytest.raises(Unauthorized):
        await verifier.verify(token)
    assert decodes == []  # the counting wrapper was replaced: the real check ran again


def _expired_decode(*_args: Any, **_kwargs: Any) -> Any:
    from jose.exceptions import ExpiredSignatureError

    raise ExpiredSignatureError("Signature has expired.")


async def test_a_refused_token_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = JwtVerifier(secret=SECRET, jwks=None)
    wrong = jwt.encode(
        {"sub": "staff-1", "exp": int(time.time()) + 300}, "x" * 48, algorithm="HS256"
    )
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await verifier.verify(wrong)
    assert verifier._verified == {}


async def test_entries_are_kept_no_longer_than_the_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = JwtVerifier(secret=SECRET, jwks=None)
    token = _token(exp=int(time.time()) + 3600)
    await verifier.verify(token)
    decodes = _count_decodes(monkeypatch)
    later = time.time() + jwt_module.VERIFIED_TTL_SECONDS + 1
    monkeypatch.setattr(jwt_module.time, "time", lambda: later)

    await verifier.verify(token)

    assert len(decodes) == 1  # checked again once the entry's time was up
