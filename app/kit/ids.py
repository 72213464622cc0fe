"""Opaque, time-ordered identifiers: a prefix, 48 bits of milliseconds, 80 random bits,
in Crockford base32. Ordered ids make cursor pagination a plain ``id < cursor``."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _b32(number: int, length: int) -> str:
    out = []
    for _ in range(length):
        number, rest = divmod(number, 32)
        out.append(_ALPHABET[rest])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_b32(millis, 10)}{_b32(int.from_bytes(os.urandom(10), 'big'), 16)}"
