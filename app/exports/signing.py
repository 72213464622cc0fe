"""The package signature: a detached JWS (RFC 7515, appendix F) over ``manifest.json``.

The ES256 key is derived from ``DSR_ENCRYPTION_KEY`` (HKDF to a P-256 scalar), so there is
no further secret to keep, and its public half is published at ``GET /v1/export-keys``
(a JWKS) for the person, or a regulator, to check a package with any JOSE library or with
``dsr export verify``. Detached: the manifest stays a plain, readable file in the ZIP and
``manifest.jws`` holds ``header..signature``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jws
from jose.exceptions import JOSEError

from app.kit.crypto import derive_key

ALGORITHM = "ES256"
_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


class BadSignature(ValueError):
    pass


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class PackageSigner:
    master_key: bytes

    @cached_property
    def _private(self) -> ec.EllipticCurvePrivateKey:
        seed = int.from_bytes(derive_key(self.master_key, "dsr/export-signing/v1"), "big")
        return ec.derive_private_key(seed % (_P256_ORDER - 1) + 1, ec.SECP256R1())

    @cached_property
    def private_pem(self) -> str:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    @cached_property
    def public_pem(self) -> str:
        return public_pem(self._private.public_key())

    @cached_property
    def key_id(self) -> str:
        der = self._private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()[:16]

    def jwks(self) -> dict[str, Any]:
        numbers = self._private.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "x": _b64(numbers.x.to_bytes(32, "big")),
                    "y": _b64(numbers.y.to_bytes(32, "big")),
                    "alg": ALGORITHM,
                    "use": "sig",
                    "kid": self.key_id,
                }
            ]
        }

    def sign_detached(self, payload: bytes) -> str:
        token = jws.sign(
            payload, self.private_pem, algorithm=ALGORITHM, headers={"kid": self.key_id}
        )
        header, _, signature = token.split(".")
        return f"{header}..{signature}"


def public_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def verify_detached(detached: str, payload: bytes, *, key: str | dict[str, Any]) -> dict[str, Any]:
    """Check ``header..signature`` over ``payload``; returns the protected header."""
    try:
        header, empty, signature = detached.strip().split(".")
    except ValueError:
        raise BadSignature("not a detached JWS (header..signature)") from None
    if empty:
        raise BadSignature("the JWS is not detached")
    token = f"{header}.{_b64(payload)}.{signature}"
    try:
        jws.verify(token, key, algorithms=[ALGORITHM])
        return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (JOSEError, ValueError) as exc:
        raise BadSignature(f"the signature does not verify: {exc}") from None
