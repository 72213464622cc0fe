"""Records flattened into spreadsheet rows: nested values become dotted columns
(``address.city``, ``items.0.sku``), so a person can open their data in any spreadsheet.

Cells that a spreadsheet would run as a formula (starting with ``= + - @``, tab or carriage
return) are prefixed with a quote (OWASP's advice against CSV injection); the JSON files
keep the values exactly as sent.
"""

from __future__ import annotations

import json
from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2]}`` -> ``{"a.b": 1, "c.0": 2}``; a non-object record is
    one column named ``value``."""
    if not isinstance(record, dict):
        return {prefix or "value": record}
    out: dict[str, Any] = {}
    _walk(record, prefix, out)
    return out


def _walk(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = "{}"
        for key, inner in value.items():
            _walk(inner, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list):
        if not value:
            out[prefix] = "[]"
        for index, inner in enumerate(value):
            _walk(inner, f"{prefix}.{index}", out)
    else:
        out[prefix] = value


def cell(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text
