"""Encryption at rest and keyed lookups for the service's own personal data.

Identity values are sealed with AES-256-GCM under a key derived from ``DSR_ENCRYPTION_KEY``;
lookups (e-mail filter, duplicates) use an HMAC-SHA256 "blind index" under another derived
key, so the database never holds a value in the clear nor an unkeyed hash of it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12
VERSION = b"\x01"


def derive_key(master: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        master
    )


class Sealer:
    """AES-GCM for small values (identity fields, outbox messages), bound to a context string
    (the row id) as associated data, so a sealed value copied to another row does not open."""

    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(derive_key(master_key, "dsr/seal/v1"))
        self._index_key = derive_key(master_key, "dsr/blind-index/v1")
        self._code_key = derive_key(master_key, "dsr/codes/v1")
        self.file_key = derive_key(master_key, "dsr/files/v1")

    def seal(self, plaintext: bytes, *, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, context.encode())
        return base64.b64encode(VERSION + nonce + sealed).decode()

    def open(self, token: str, *, context: str) -> bytes:
        raw = base64.b64decode(token)
        if raw[:1] != VERSION:
            raise ValueError("unknown sealed-value version")
        nonce, sealed = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :]
        return self._aead.decrypt(nonce, sealed, context.encode())

    def seal_json(self, value: Any, *, context: str) -> str:
        return self.seal(json.dumps(value, ensure_ascii=False).encode(), context=context)

    def open_json(self, token: str, *, context: str) -> Any:
        return json.loads(self.open(token, context=context))

    def blind_index(self, normalised: str) -> str:
        return hmac.new(self._index_key, normalised.encode(), hashlib.sha256).hexdigest()

    def code_digest(self, *, context: str, code: str) -> str:
        """Keyed digest of a one-time code: a stolen table cannot be brute-forced offline."""
        return hmac.new(self._code_key, f"{context}:{code}".encode(), hashlib.sha256).hexdigest()


def token_digest(token: str) -> str:
    """Digest of a high-entropy bearer secret (status tokens): no key needed, 256 bits in."""
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def normalise_email(email: str) -> str:
    local, _, domain = email.strip().rpartition("@")
    return f"{local}@{domain.lower()}".lower() if local else email.strip().lower()
