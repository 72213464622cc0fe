"""Records parsed and written with orjson, falling back to ``json`` wherever orjson would
change or refuse what a system sent.

The assembly parses every record of packages that reach gigabytes; orjson does it several
times faster than ``json``, and writes compact UTF-8 (never ``\\u``-escaped). It differs from
``json`` in three ways that matter for a person's own data, and each takes the ``json`` path:

* an integer beyond 64 bits is read as a float (precision lost): any run of 20 digits in
  the text sends it to ``json`` (a false alarm is only slower);
* ``NaN``, ``Infinity`` and lone surrogate escapes are refused: ``json`` reads them;
* what ``json`` read is written back with ``json`` too (orjson would write NaN as ``null``),
  a lone surrogate as the ``\\uXXXX`` escape it was sent as (UTF-8 cannot hold it raw).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from app.kit.text import utf8_json

# Every digit made a "0", so that a run of 19 digits is a plain substring search (a regular
# expression scans several times slower). 19, not 20: orjson reads integers below -2**63
# (19 digits after the sign) as floats too.
_DIGITS = bytes.maketrans(b"0123456789", b"0" * 10)
_RUN = b"0" * 19


def exact(text: bytes | bytearray | memoryview) -> bool:
    """False when ``text`` may hold a number orjson would not keep exactly."""
    return _RUN not in bytes(text).translate(_DIGITS)


def loads(text: bytes | bytearray | memoryview, *, checked: bool = False) -> tuple[Any, bool]:
    """``(value, fast)``: ``fast`` says orjson read it (and may write it back). ``checked``:
    the caller already knows ``text`` holds no long digit run. Raises ``ValueError`` for
    what neither library reads."""
    if checked or exact(text):
        try:
            return orjson.loads(text), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(bytes(text).decode()), False


def dumps(value: Any, *, fast: bool) -> bytes:
    """``value`` as compact-enough UTF-8 JSON on one line. ``fast`` only for what orjson
    read, or text that holds no lone surrogate (orjson refuses to write one)."""
    if fast:
        return orjson.dumps(value)
    return utf8_json(json.dumps(value, ensure_ascii=False))
