"""Records flattened into spreadsheet rows: nested values become dotted columns
(``address.city``, ``items.0.sku``), so a person can open their data in any spreadsheet.

Cells that a spreadsheet would run as a formula (starting with ``= + - @``, tab or carriage
return) are prefixed with a quote (OWASP's advice against CSV injection); the JSON files
keep the values exactly as sent. This runs once per record of packages that reach
gigabytes, so it is written for speed: one walk that flattens and converts the leaves,
exact type checks (records come from a JSON parser), no recursion for flat values.
"""

from __future__ import annotations

import json
from typing import Any

_FORMULA_START = frozenset("=+-@\t\r")


def cell(value: Any) -> Any:
    """A value as the CSV writer should get it: text guarded against formulas, booleans in
    lower case, nothing for null; numbers as they are."""
    kind = type(value)
    if kind is str:
        return "'" + value if value and value[0] in _FORMULA_START else value
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return value
    return json.dumps(value, ensure_ascii=False)


def cells(record: Any) -> dict[str, Any]:
    """A record as its CSV cells by column: ``{"a": {"b": None}, "c": [2]}`` ->
    ``{"a.b": "", "c.0": 2}``; a non-object record is one column named ``value``. The
    assembly calls it once per record and takes both the column set and the CSV row from
    it, so the leaves are converted here rather than in a second pass over the dict."""
    out: dict[str, Any] = {}
    if type(record) is dict:
        _cells_object(record, "", out)
    else:
        out["value"] = cell(record)
    return out


def _cells_object(value: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, inner in value.items():
        kind = type(inner)
        if kind is str:
            out[prefix + key] = "'" + inner if inner and inner[0] in _FORMULA_START else inner
        elif kind is dict:
            if inner:
                _cells_object(inner, prefix + key + ".", out)
            else:
                out[prefix + key] = "{}"
        elif kind is list:
            if inner:
                _cells_array(inner, prefix + key + ".", out)
            else:
                out[prefix + key] = "[]"
        elif kind is int or kind is float:
            out[prefix + key] = inner
        else:
            out[prefix + key] = cell(inner)


def _cells_array(value: list[Any], prefix: str, out: dict[str, Any]) -> None:
    for index, inner in enumerate(value):
        kind = type(inner)
        if kind is str:
            out[prefix + str(index)] = (
                "'" + inner if inner and inner[0] in _FORMULA_START else inner
            )
        elif kind is dict:
            if inner:
                _cells_object(inner, f"{prefix}{index}.", out)
            else:
                out[prefix + str(index)] = "{}"
        elif kind is list:
            if inner:
                _cells_array(inner, f"{prefix}{index}.", out)
            else:
                out[prefix + str(index)] = "[]"
        elif kind is int or kind is float:
            out[prefix + str(index)] = inner
        else:
            out[prefix + str(index)] = cell(inner)
