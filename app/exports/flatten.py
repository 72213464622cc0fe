"""Records flattened into spreadsheet rows: nested values become dotted columns
(``address.city``, ``items.0.sku``), so a person can open their data in any spreadsheet.

Cells that a spreadsheet would run as a formula (starting with ``= + - @``, tab or carriage
return) are prefixed with a quote (OWASP's advice against CSV injection); the JSON files
keep the values exactly as sent. This runs once per record of packages that reach
gigabytes, so it is written for speed: one walk that flattens and converts the leaves,
exact type checks (records come from a JSON parser), no recursion for flat values.

``row_builder`` compiles, for one shape of record (its keys, nesting and list lengths), a
function that returns such a record's row with a few Python operations instead of a walk,
or None for a record of any other shape: most results hold thousands of records of a
handful of shapes. ``csv_text`` formats rows the way ``csv.writer`` does (the package's
CSV bytes are the same), a column at a time: the writer's per-field work in C costs about
three times as much.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

_FORMULA_START = frozenset("=+-@\t\r")
_TEXT_ONLY = {str}
_PLAIN_TYPES = frozenset((str, int, float))  # what str() turns into the writer's own text
_CELL_TYPES = _PLAIN_TYPES | {type(None)}  # None: an empty cell, as the writer writes it
_GUARDED_AFTER_SEPARATOR = re.compile("\x00[=+\\-@\t\r]")


RowBuilder = Callable[[Any], "list[Any] | None"]


def row_builder(record: Any, positions: dict[str, int]) -> RowBuilder | None:
    """A function giving the CSV row (cells in ``positions``' order, ``""`` for the columns
    it lacks) of any record of ``record``'s shape, and None for any other record; None
    when ``record`` is not a shape it can build for.

    The row is the one ``cells`` gives once written by ``csv_text`` (which guards the
    strings and writes None as an empty cell, as ``cells`` does). What the function checks: the
    record and every container in it is a dict or list of the same type and length as in
    ``record``, every key of ``record`` is there (with the same lengths, no other key can
    be), and every leaf is a string, a number or null (a nested, empty or boolean value
    is left to ``cells``). The keys are passed to the compiled code as values, never
    written into its source."""
    if type(record) is not dict or not record:
        return None
    keys: list[Any] = []
    code: list[str] = []
    slots = ['""'] * len(positions)
    taken: set[int] = set()
    names = iter(range(1, 1 << 30))

    def walk(var: str, value: dict[str, Any] | list[Any], prefix: str) -> bool:
        pairs = value.items() if type(value) is dict else enumerate(value)
        for key, inner in pairs:
            if type(key) is str:
                name = prefix + key
                keys.append(key)
                access = f"{var}[k{len(keys) - 1}]"
            else:
                name = f"{prefix}{key}"
                access = f"{var}[{key}]"
            kind = type(inner)
            if (kind is dict or kind is list) and inner:
                sub = f"v{next(names)}"
                code.append(f"{sub} = {access}")
                code.append(
                    f"if type({sub}) is not {kind.__name__} or len({sub}) != {len(inner)}:"
                    " return None"
                )
                if not walk(sub, inner, name + "."):
                    return False
                continue
            position = positions.get(name)
            if kind not in _CELL_TYPES or position is None or position in taken:
                return False  # a value cells() converts, or two leaves in one column
            taken.add(position)
            slots[position] = access
        return True

    if not walk("r", record, ""):
        return None
    lines = [
        "def build(r):",
        f"    if type(r) is not dict or len(r) != {len(record)}: return None",
        "    try:",
        *(f"        {line}" for line in code),
        f"        row = [{', '.join(slots)}]",
        "    except KeyError:",
        "        return None",
        "    return row if cell_types.issuperset(map(type, row)) else None",
    ]
    scope: dict[str, Any] = {f"k{n}": key for n, key in enumerate(keys)}
    scope["cell_types"] = _CELL_TYPES
    exec("\n".join(lines), scope)  # the source holds only names and numbers
    built: RowBuilder = scope["build"]
    return built


def csv_text(rows: list[list[Any]]) -> str:
    """``rows``, all of one length, as ``csv.writer(lineterminator="\\r\\n")`` writes them
    (minimal quoting, ``None`` as an empty cell), every line ended, once every string
    cell is guarded against formulas as ``cell`` guards it (which changes no cell that
    ``cell`` made: a guarded cell starts with a quote).

    Columns, not rows: each column's cells become text in one ``map`` and are searched,
    joined, for the characters that need quoting and for a guarded character after a
    separator; only a column that has some is changed cell by cell. The lines are then
    joined in C (``zip`` and ``str.join``), with no Python code per row. Rows the writer
    treats specially (one column, where an empty cell is written ``""``) and cells of
    other types go to the writer itself."""
    if not rows:
        return ""
    if len(rows[0]) < 2:
        return _written(rows)
    columns: list[Sequence[str]] = []
    for column in zip(*rows, strict=True):
        kinds = set(map(type, column))
        texts: Sequence[str]
        if kinds == _TEXT_ONLY:
            texts = column
        elif kinds <= _PLAIN_TYPES:
            texts = list(map(str, column))
        elif kinds <= _CELL_TYPES:
            texts = ["" if value is None else str(value) for value in column]
        else:
            return _written(rows)
        if str in kinds:
            joined = "\x00".join(texts)
            if texts[0][:1] in _FORMULA_START or _GUARDED_AFTER_SEPARATOR.search(joined):
                texts = [
                    "'" + text if type(value) is str and text[:1] in _FORMULA_START else text
                    for value, text in zip(column, texts, strict=True)
                ]
            if "," in joined or '"' in joined or "\n" in joined or "\r" in joined:
                texts = [_quoted(text) for text in texts]
        columns.append(texts)
    return "\r\n".join(map(",".join, zip(*columns, strict=True))) + "\r\n"


def _quoted(text: str) -> str:
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _written(rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows([[cell(v) if type(v) is str else v for v in row] for row in rows])
    return out.getvalue()


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
