"""Records flattened into spreadsheet rows: nested values become dotted columns
(``address.city``, ``items.0.sku``), so a person can open their data in any spreadsheet.

Cells that a spreadsheet would run as a formula (starting with ``= + - @``, tab or carriage
return) are prefixed with a quote (OWASP's advice against CSV injection); the JSON files
keep the values exactly as sent. This runs once per record of packages that reach
gigabytes, so it is written for speed: exact type checks (records come from ``json``),
no recursion for flat values.
"""

from __future__ import annotations

import json
from typing import Any

_FORMULA_START = frozenset("=+-@\t\r")


def flatten(record: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2]}`` -> ``{"a.b": 1, "c.0": 2}``; a non-object record is
    one column named ``value``."""
    if type(record) is not dict:
        return {"value": record}
    out: dict[str, Any] = {}
    _object(record, "", out)
    return out


def _object(value: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, inner in value.items():
        name = prefix + key
        kind = type(inner)
        if kind is dict:
            if inner:
                _object(inner, name + ".", out)
            else:
                out[name] = "{}"
        elif kind is list:
            if inner:
                _array(inner, name + ".", out)
            else:
                out[name] = "[]"
        else:
            out[name] = inner


def _array(value: list[Any], prefix: str, out: dict[str, Any]) -> None:
    for index, inner in enumerate(value):
        name = prefix + str(index)
        kind = type(inner)
        if kind is dict:
            if inner:
                _object(inner, name + ".", out)
            else:
                out[name] = "{}"
        elif kind is list:
            if inner:
                _array(inner, name + ".", out)
            else:
                out[name] = "[]"
        else:
            out[name] = inner


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


def row(flat: dict[str, Any], columns: list[str]) -> list[Any]:
    get = flat.get
    return [cell(get(column)) for column in columns]


def cells(record: Any) -> dict[str, Any]:
    """``flatten`` and ``cell`` in one walk: ``{"a": {"b": None}}`` -> ``{"a.b": ""}``. The
    assembly calls it once per record, and builds both the column set and the CSV row from
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
