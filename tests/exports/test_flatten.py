"""Rows as the package's CSV files hold them: the fast paths give exactly what the general
ones give (``csv.writer``'s bytes, ``cells``' values), whatever the data."""

from __future__ import annotations

import csv
import io
import json
import random
from typing import Any

import pytest

from app.exports.flatten import cell, cells, csv_text, row_builder

TRICKY = ["", "a", "a,b", 'say "hi"', "two\r\nlines", "cr\ronly", "lf\nonly", " lead", "é,ü", '"']
GUARDED = ["=1+1", "+33 6 12", "-x", "@SUM(A1)", "\tTab", "\rCR", "'=already", "a\x00=b"]
VALUES: list[Any] = [*TRICKY, *GUARDED, None, 0, -1, 2**70, 1.5, -0.0, 1e300, float("nan"), "日本"]


def _writer(rows: list[list[Any]]) -> str:
    """What the package held before: each string guarded by ``cell``, then ``csv.writer``."""
    out = io.StringIO()
    guarded = [[cell(v) if type(v) is str else v for v in row] for row in rows]
    csv.writer(out, lineterminator="\r\n").writerows(guarded)
    return out.getvalue()


@pytest.mark.parametrize("seed", range(40))
def test_csv_text_is_what_the_csv_writer_writes(seed: int) -> None:
    rng = random.Random(seed)
    width = rng.randint(1, 6)
    rows = [[rng.choice(VALUES) for _ in range(width)] for _ in range(rng.randint(1, 40))]
    assert csv_text(rows) == _writer(rows)


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [[""]],
        [[None], ["x"]],
        [["", ""]],
        [[None, None]],
        [[True, "x"]],  # not a cell type of its own: left to the writer
        [[{"a": 1}, "=x"]],
        [["a,b", 1], ["c", 2]],
        [["\u2028", "\x00"]],
        [[-1, "-1"], ["-1", -1]],  # only text is guarded, never a number
        [["=x", "'=x"], [cell("=x"), cell("'=x")]],  # guarding twice changes nothing
        [["ok", "fine"], ["ok", "=bad"]],
    ],
)
def test_csv_text_edge_rows(rows: list[list[Any]]) -> None:
    assert csv_text(rows) == _writer(rows)


SHAPES = [(address, items, tags) for address in (0, 1) for items in (1, 2, 3) for tags in (0, 1)]


def _random_record(rng: random.Random, shape: tuple[int, int, int]) -> dict[str, Any]:
    address, items, tags = shape
    scalar = lambda: rng.choice(VALUES)  # noqa: E731
    record: dict[str, Any] = {"id": rng.randint(-5, 5), "name": scalar()}
    if address:
        record["address"] = {"city": scalar(), "geo": {"lat": scalar(), "lon": scalar()}}
    record["items"] = [{"sku": scalar(), "qty": scalar()} for _ in range(items)]
    if tags:
        record["tags"] = [scalar() for _ in range(2)]
    return record


def _row_by_cells(record: Any, positions: dict[str, int]) -> list[Any]:
    flat = cells(record)
    row: list[Any] = [""] * len(positions)
    for name, value in flat.items():
        row[positions[name]] = value
    return row


@pytest.mark.parametrize("seed", range(10))
def test_a_row_builder_gives_the_row_cells_gives(seed: int) -> None:
    rng = random.Random(seed)
    records = [_random_record(rng, rng.choice(SHAPES)) for _ in range(200)]
    positions: dict[str, int] = {}
    for record in records:
        for name in cells(record):
            positions.setdefault(name, len(positions))
    builders = [row_builder(_random_record(rng, shape), positions) for shape in SHAPES]
    for record in records:
        expected = csv_text([_row_by_cells(record, positions)])
        rows = [row for b in builders if b is not None and (row := b(record)) is not None]
        assert len(rows) == 1  # exactly the builder of its own shape
        assert csv_text(rows) == expected


def test_a_row_builder_refuses_every_other_shape() -> None:
    base = {"a": 1, "b": {"c": "x", "d": [1, 2]}, "e": None}
    positions = {name: n for n, name in enumerate(["a", "b.c", "b.d.0", "b.d.1", "e", "f"])}
    build = row_builder(base, positions)
    assert build is not None
    assert build(base) == [1, "x", 1, 2, None, ""]
    # any key order; the text is guarded by csv_text
    other_order = {"e": "é", "b": {"d": [-1.5, "=x"], "c": ""}, "a": "z"}
    assert build(other_order) == ["z", "", -1.5, "=x", "é", ""]
    for other in [
        {"a": 1, "b": {"c": "x", "d": [1, 2, 3]}, "e": None},  # a longer list
        {"a": 1, "b": {"c": "x", "d": [1]}, "e": None},  # a shorter one
        {"a": 1, "b": {"c": "x", "d": [1, 2]}},  # a key missing
        {"a": 1, "b": {"c": "x", "d": [1, 2]}, "e": None, "f": 2},  # one more
        {"a": 1, "b": {"c": "x", "d": [1, 2]}, "g": None},  # another key
        {"a": 1, "b": {"c": "x", "x": [1, 2]}, "e": None},  # another nested key
        {"a": True, "b": {"c": "x", "d": [1, 2]}, "e": None},  # a boolean ("true")
        {"a": {}, "b": {"c": "x", "d": [1, 2]}, "e": None},  # an empty object ("{}")
        {"a": [], "b": {"c": "x", "d": [1, 2]}, "e": None},  # an empty list ("[]")
        {"a": {"z": 1}, "b": {"c": "x", "d": [1, 2]}, "e": None},  # nested where a leaf was
        {"a": 1, "b": {"c": "x", "d": {"0": 1, "1": 2}}, "e": None},  # an object for a list
        {"a": 1, "b": ["x", [1, 2]], "e": None},  # a list for an object
        {"a": 1, "b": "x", "e": None},  # a leaf for an object
        [1, {"c": "x"}, None],
        "text",
    ]:
        assert build(other) is None, other


def test_no_row_builder_where_two_leaves_share_a_column() -> None:
    # cells() keeps the last of them, which depends on the key order: always walked
    record = {"a.b": 1, "a": {"b": 2}}
    assert row_builder(record, {"a.b": 0}) is None
    assert row_builder({"x": 1, "y": True}, {"x": 0, "y": 1}) is None  # a converted leaf
    assert row_builder({}, {}) is None
    assert row_builder(["x"], {"value": 0}) is None


def test_a_row_builder_keeps_keys_out_of_its_code() -> None:
    key = '"]; import os; os._exit(1) #'
    record = {key: 1, "b": {key: "\\n"}}
    positions = {name: n for n, name in enumerate(cells(record))}
    build = row_builder(record, positions)
    assert build is not None
    assert build(json.loads(json.dumps(record))) == [1, "\\n"]
