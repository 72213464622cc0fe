"""The package builder on its own: what it writes from NDJSON and JSON results whatever their
shape (columns that appear late, numbers orjson would not keep, unreadable lines), checked
against the records as sent."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.exports import assembly, spools
from app.exports.assembly import SourceFile, SystemInput, build_package
from app.exports.flatten import cells
from app.exports.signing import PackageSigner
from app.kit.streams import iter_decrypted

KEY = bytes(range(32))


def _source(data: bytes, format: str = "ndjson", piece: int = 97) -> SourceFile:
    def chunks() -> Iterator[bytes]:
        return iter([data[i : i + piece] for i in range(0, len(data), piece)])

    return SourceFile(format=format, size=len(data), chunks=chunks)


def _ndjson(items: list[Any]) -> bytes:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items).encode()


def _build(tmp_path: Path, *sources: SourceFile) -> tuple[zipfile.ZipFile, dict[str, Any]]:
    path = tmp_path / "package.enc"
    built = build_package(
        path,
        wrapping_key=KEY,
        context="test",
        signer=PackageSigner(bytes(32)),
        request={"id": "req_1"},
        systems=[SystemInput(name="Shop", outcome="found", processing={}, sources=list(sources))],
        report=None,
    )
    raw = b"".join(iter_decrypted(path, wrapping_key=KEY, context="test"))
    assert hashlib.sha256(raw).hexdigest() == built.sha256
    archive = zipfile.ZipFile(io.BytesIO(raw))
    for entry in built.manifest["files"]:
        assert hashlib.sha256(archive.read(entry["path"])).hexdigest() == entry["sha256"]
    return archive, built.manifest


def _csv(archive: zipfile.ZipFile, name: str) -> list[list[str]]:
    text = archive.read(name).decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text, newline="")))


def test_columns_that_appear_late_are_in_every_row(tmp_path: Path) -> None:
    records: list[Any] = [{"id": None}, {"id": 2, "note": 'two\r\nlines, "quoted"'}]
    records += [{"id": n, "note": "=1+1", "items": [{"sku": f"S{n}"}]} for n in range(3, 600)]
    records += [{"id": 600, "late": {"x": True}}, {"id": 601}]
    records += [{"id": n, "items": [{"sku": "A"}, {"sku": "B"}]} for n in range(602, 1200)]
    archive, manifest = _build(
        tmp_path, _source(_ndjson([{"category": "orders", "record": r} for r in records]))
    )
    header, *rows = _csv(archive, "data/shop/orders.csv")
    assert header == ["id", "note", "items.0.sku", "late.x", "items.1.sku"]
    assert len(rows) == len(records)
    assert rows[0] == ["", "", "", "", ""]
    assert rows[1] == ["2", 'two\r\nlines, "quoted"', "", "", ""]
    assert rows[3] == ["4", "'=1+1", "S4", "", ""]
    assert rows[599] == ["600", "", "", "true", ""]
    assert rows[-1] == ["1199", "", "A", "", "B"]
    assert json.loads(archive.read("data/shop.json")) == {"orders": records}
    assert manifest["systems"][0]["categories"] == [
        {"name": "orders", "count": len(records), "file": "data/shop/orders.csv"}
    ]


def test_numbers_and_text_are_kept_exactly_as_sent(tmp_path: Path) -> None:
    big = 123456789012345678901234567890
    lines = [
        json.dumps({"category": "a", "record": {"big": big, "name": "Ána"}}),  # \u-escaped in
        '{"category": "a", "record": {"n": NaN, "i": -Infinity}}',
        '{"category": "a", "record": {"f": 0.1, "e": 1e300, "neg": -9223372036854775808, '
        '"below": -9223372036854775809}}',
        "not json at all",
        '["a", "bare", "list"]',
        "",
        '"text"\r',
    ]
    archive, manifest = _build(tmp_path, _source(("\n".join(lines) + "\n").encode()))
    text = archive.read("data/shop.json").decode()
    assert "\\u" not in text
    assert "Ána" in text
    data = json.loads(text)
    assert data["a"][0] == {"big": big, "name": "Ána"}
    assert type(data["a"][0]["big"]) is int
    assert str(data["a"][1]["n"]) == "nan"
    assert data["a"][1]["i"] == float("-inf")
    assert data["a"][2] == {
        "f": 0.1,
        "e": 1e300,
        "neg": -9223372036854775808,
        "below": -9223372036854775809,  # orjson would read it as a float
    }
    assert data["records"] == [["a", "bare", "list"], "text"]
    assert manifest["systems"][0]["unreadable_lines"] == 1
    header, first, _, third, *_ = _csv(archive, "data/shop/a.csv")
    assert header[:2] == ["big", "name"]
    assert first[:2] == [str(big), "Ána"]
    assert third[header.index("below")] == "-9223372036854775809"


@pytest.mark.parametrize("piece", [1, 64 * 1024])
def test_a_json_result_and_many_categories(tmp_path: Path, piece: int) -> None:
    data = {
        "orders": [{"id": n, "tags": ["é", "+x"]} for n in range(300)],
        "profile": {"email": "a@example.org"},
        "empty": [],
    }
    archive, _ = _build(tmp_path, _source(json.dumps(data).encode(), "json", piece))
    assert json.loads(archive.read("data/shop.json")) == {
        "orders": data["orders"],
        "profile": [data["profile"]],
        "empty": [],
    }
    assert _csv(archive, "data/shop/empty.csv") == [[]]
    assert _csv(archive, "data/shop/orders.csv")[300] == ["299", "é", "'+x"]
    assert _csv(archive, "data/shop/profile.csv") == [["email"], ["a@example.org"]]


def test_a_result_that_fails_to_read_fails_the_build_and_leaves_nothing(tmp_path: Path) -> None:
    def broken() -> Iterator[bytes]:
        yield b'{"n": 1}\n'
        raise ValueError("chunk 3 failed authentication")

    good = _source(_ndjson([{"n": n} for n in range(100)]))
    systems = [
        SystemInput(name=f"S{n}", outcome="found", processing={}, sources=[good]) for n in range(3)
    ]
    systems.insert(2, SystemInput(name="bad", outcome="found", processing={}, sources=[]))
    systems[2].sources.append(SourceFile(format="ndjson", size=10, chunks=broken))
    with pytest.raises(ValueError, match="chunk 3"):
        build_package(
            tmp_path / "package.enc",
            wrapping_key=KEY,
            context="test",
            signer=PackageSigner(bytes(32)),
            request={"id": "req_1"},
            systems=systems,
        )
    assert list(tmp_path.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "export-spooler"]


def test_records_are_taken_from_their_lines_only_when_that_is_exact(tmp_path: Path) -> None:
    lines = [
        '{"category": "a", "record": {"x": 1}, "record": {"x": 2}}',  # the last one counts
        '{"category": "a", "record": {"x": 3}, "category": "a"}',
        '{"category":"a","record":{"x":4}}',
        '{"category": "a", "record": {"x": "say \\"record\\"", "y": [1, 2]} }\r',
        '{"record": {"x": 6}, "category": "a"}',
        '{"category": "a", "record": "caf\\u00e9"}',
        '{"category": "a", "record": {"x": "C:\\\\users"}}',
        '{"category": "\\u00e9t\\u00e9", "record": 8}',
        '  {"x": 9}  ',
    ]
    archive, _ = _build(tmp_path, _source(("\n".join(lines) + "\n").encode()))
    text = archive.read("data/shop.json").decode()
    assert "\\u00" not in text
    assert json.loads(text) == {
        "a": [
            {"x": 2},
            {"x": 3},
            {"x": 4},
            {"x": 'say "record"', "y": [1, 2]},
            {"x": 6},
            "café",
            {"x": "C:\\users"},
        ],
        "été": [8],
        "records": [{"x": 9}],
    }


def test_an_error_inside_a_member_is_the_error_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spools, "JSON_IN_MEMORY_LIMIT", 10)  # the upload goes in as sent

    def cut() -> Iterator[bytes]:
        yield b'{"orders": [{"n": 1},'
        raise ValueError("chunk 2 failed authentication")

    with pytest.raises(ValueError, match="chunk 2 failed authentication"):
        _build(tmp_path, SourceFile(format="json", size=100, chunks=cut))
    assert list(tmp_path.iterdir()) == []


def test_cells_flatten_and_guard_every_kind_of_value() -> None:
    record = {
        "a": {"b": None, "c": [True, {"d": "-1"}, []], "e": {}},
        "f": 1.5,
        "g": "@SUM(A1)",
        "h": "",
    }
    assert cells(record) == {
        "a.b": "",
        "a.c.0": "true",
        "a.c.1.d": "'-1",
        "a.c.2": "[]",
        "a.e": "{}",
        "f": 1.5,
        "g": "'@SUM(A1)",
        "h": "",
    }
    assert cells(["x"]) == {"value": '["x"]'}
    assert cells("=x") == {"value": "'=x"}


def test_rows_of_many_shapes_are_the_rows_their_cells_give(tmp_path: Path) -> None:
    """Past the preview, records are built by compiled row builders and written a column at
    a time: the CSV must still hold, for every record, what ``cells`` makes of it, whatever
    the mix of shapes, a column first seen late, and text that needs guarding or quoting."""
    rng = random.Random(4)
    texts = ["Ána", "Saint-Étienne", "a,b", 'say "x"', "two\nlines", "+33 6", "=1+1", "", "日本"]

    def record(n: int) -> dict[str, Any]:
        value: dict[str, Any] = {"id": n, "name": rng.choice(texts)}
        if n % 3:
            value["address"] = {"city": rng.choice(texts), "zip": rng.choice([None, "75001"])}
        value["items"] = [
            {"sku": rng.choice(texts), "qty": rng.choice([1, -2, 0.5, None])}
            for _ in range(n % 4 + 1)
        ]
        if n % 7 == 0:
            value["flag"] = rng.choice([True, False, None])
        if n in (900, 1400):  # a column first seen late, then the earlier shapes again
            value["late"] = {"x": rng.choice(texts), "y": []}
        if n % 11 == 0:
            value["items"] = {"0": {"sku": "object, not a list"}}
        return value

    records = [record(n) for n in range(1500)]
    archive, _ = _build(
        tmp_path, _source(_ndjson([{"category": "c", "record": r} for r in records]), piece=4096)
    )
    header, *rows = _csv(archive, "data/shop/c.csv")
    assert len(rows) == len(records)
    for row, value in zip(rows, records, strict=True):
        flat = {name: text for name, text in zip(header, row, strict=True) if text != ""}
        expected = {name: str(v) for name, v in cells(value).items() if v != ""}
        assert flat == expected
    assert json.loads(archive.read("data/shop.json")) == {"c": records}


def test_members_are_deflated_by_isal_and_read_by_any_zip_reader(tmp_path: Path) -> None:
    """ISA-L is put in place of the member's zlib compressor through a private attribute
    of ``zipfile``: this fails when a Python release moves it (the package would then be
    deflated by zlib, correct but several times slower)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        handle = assembly._open_member(archive, "data/x.json")
        assert type(handle._compressor).__module__.startswith("isal")  # type: ignore[attr-defined]
        text = "".join(f'{{"n": {n}, "t": "Ána {n % 7}"}}\n' for n in range(50_000)).encode()
        handle.write(text)
        handle.close()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        assert archive.testzip() is None
        assert archive.read("data/x.json") == text
        assert archive.getinfo("data/x.json").compress_size < len(text) / 4


# A lone surrogate escape: valid JSON text, but no UTF-8 can hold the character it reads as.
LONE = '"\\ud800"'


def test_a_lone_surrogate_is_kept_escaped_in_the_json_and_replaced_in_the_csv(
    tmp_path: Path,
) -> None:
    """One bad value does not fail the package: ``data/<system>.json`` keeps it as the
    escape that was sent (valid JSON, read back as the same value), its CSV cell shows
    U+FFFD, and the records around it are written as they would be without it."""
    ordinary = [{"category": "orders", "record": {"id": n, "note": f"n {n} é"}} for n in range(700)]
    lines = [json.dumps(item, ensure_ascii=False) for item in ordinary]
    lines.insert(3, '{"category": "orders", "record": {"id": -1, "note": ' + LONE + "}}")
    lines.insert(400, '{"id": -2, "note": "a \\udfff b", "k\\udc80": ["\\ud83d\\ude00"]}')
    lines.insert(500, '{"category": "orders", "record": {"id": -3, "late": ' + LONE + "}}")
    body = '{"profile": [{"name": "Ana", "bio": ' + LONE + "}]}"
    archive, manifest = _build(
        tmp_path,
        _source(("\n".join(lines) + "\n").encode()),
        _source(body.encode(), format="json"),
    )
    text = archive.read("data/shop.json").decode()  # strict UTF-8
    assert "\\ud800" in text
    assert "\\udfff" in text
    assert "\\udc80" in text
    data = json.loads(text)
    assert data["orders"][3] == {"id": -1, "note": "\ud800"}
    assert data["orders"][499] == {"id": -3, "late": "\ud800"}
    assert data["records"] == [{"id": -2, "note": "a \udfff b", "k\udc80": ["\U0001f600"]}]
    assert data["profile"] == [{"name": "Ana", "bio": "\ud800"}]
    others = [r for r in data["orders"] if r["id"] >= 0]
    assert others == [item["record"] for item in ordinary]

    header, *rows = _csv(archive, "data/shop/orders.csv")
    assert header == ["id", "note", "late"]
    assert rows[3] == ["-1", "\ufffd", ""]
    assert rows[499] == ["-3", "", "\ufffd"]
    assert rows[4] == ["3", "n 3 é", ""]
    assert _csv(archive, "data/shop/records.csv") == [
        ["id", "note", "k\ufffd.0"],
        ["-2", "a \ufffd b", "\U0001f600"],
    ]
    assert _csv(archive, "data/shop/profile.csv") == [["name", "bio"], ["Ana", "\ufffd"]]
    assert {c["name"]: c["count"] for c in manifest["systems"][0]["categories"]} == {
        "orders": 702,
        "records": 1,
        "profile": 1,
    }


def test_a_lone_surrogate_past_the_preview_and_in_a_compiled_row(tmp_path: Path) -> None:
    """Records of a shape with a compiled row builder (past the preview) go the same way."""
    lines = [json.dumps({"id": n, "note": f"n{n}"}) for n in range(1500)]
    lines[1200] = '{"id": 1200, "note": ' + LONE + "}"
    archive, _ = _build(tmp_path, _source(("\n".join(lines) + "\n").encode()))
    records = json.loads(archive.read("data/shop.json").decode())["records"]
    assert records[1200] == {"id": 1200, "note": "\ud800"}
    assert records[1199] == {"id": 1199, "note": "n1199"}
    rows = _csv(archive, "data/shop/records.csv")
    assert rows[1201] == ["1200", "\ufffd"]
    assert rows[1200] == ["1199", "n1199"]


def test_a_category_named_with_a_lone_surrogate(tmp_path: Path) -> None:
    """Not a name any system should send, but it is written, not a failed package: the
    JSON and the manifest keep its escape."""
    line = '{"category": "notes \\ud800", "record": {"n": 1}}\n'
    archive, manifest = _build(tmp_path, _source(line.encode()))
    assert json.loads(archive.read("data/shop.json").decode()) == {"notes \ud800": [{"n": 1}]}
    assert manifest["systems"][0]["categories"][0]["name"] == "notes \ud800"
    assert json.loads(archive.read("manifest.json").decode()) == manifest
    assert _csv(archive, "data/shop/notes.csv") == [["n"], ["1"]]
