"""Writing a package: a ZIP streamed straight into an encrypted file, in bounded memory.

For each system, its stored results (inline ``data``, JSON and NDJSON uploads) are read back
chunk by chunk and spooled one record per line into per-category files (encrypted with a
key that lives only in memory for the build); from the spools come ``data/<system>.json``
(one record per line, UTF-8, not ``\\u``-escaped) and ``data/<system>/<category>.csv``
(nested values in dotted columns). Then ``report.html``, ``manifest.json`` (every file with
its size and SHA-256) and ``manifest.jws`` (its detached signature). The ZIP is written with
``zipfile`` in streaming mode (data descriptors, ZIP64), so no member is ever whole in
memory, and its own SHA-256 is computed as it is written: it is what ``export.sha256``
promises of the bytes served.

NDJSON uploads carry one record per line, as ``{"category": "...", "record": {...}}`` or
as a bare record (filed under ``records``). A JSON upload is ``{"<category>": [records]}``
like a result's ``data``; one larger than ``JSON_IN_MEMORY_LIMIT`` is put in the package as
sent, without CSV (send NDJSON for that size).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import time
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import __version__
from app.exports.flatten import cell, flatten, row
from app.exports.signing import PackageSigner
from app.kit.streams import EncryptedWriter, iter_decrypted

JSON_IN_MEMORY_LIMIT = 64 * 1024 * 1024
MANIFEST_FORMAT = "dsr-export/1"
_FLUSH_AT = 256 * 1024
PREVIEW_ROWS = 100  # records per category shown in report.html (all are in the files)


@dataclass
class SourceFile:
    """One stored result file of a system, readable chunk by chunk."""

    format: str  # json | ndjson
    size: int
    chunks: Any  # a callable returning an iterator of plaintext chunks


@dataclass
class SystemInput:
    name: str
    outcome: str | None
    processing: dict[str, Any]
    sources: list[SourceFile] = field(default_factory=list)
    only_categories: frozenset[str] | None = None  # portability: what the person provided


@dataclass
class BuiltPackage:
    size: int
    sha256: str
    manifest: dict[str, Any]


def slug(name: str, taken: set[str]) -> str:
    """A file-system-safe, unique name for a system or category."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower()[:60] or "system"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate


class _ZipSink:
    """Where the ZIP's bytes go: the encrypted package file, hashed on the way."""

    def __init__(self, writer: EncryptedWriter) -> None:
        self.writer = writer
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.writer.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Member:
    """A ZIP member being written, with its own size and SHA-256 for the manifest."""

    def __init__(self, archive: zipfile.ZipFile, path: str) -> None:
        self.path = path
        info = zipfile.ZipInfo(path, date_time=time.gmtime()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        # Level 1: records compress well even so, and assembly is CPU-bound (3.13 names it
        # ZipInfo.compress_level; 3.11 reads this attribute).
        setattr(info, "_compresslevel", 1)  # noqa: B010
        self.handle = archive.open(info, "w", force_zip64=True)
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        if data:
            self.sha256.update(data)
            self.handle.write(data)
            self.size += len(data)

    def close(self) -> dict[str, Any]:
        self.handle.close()
        return {"path": self.path, "bytes": self.size, "sha256": self.sha256.hexdigest()}


class _Spool:
    """One category's records, one JSON line each, in an encrypted temporary file."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path, self.key = path, key
        self.writer = EncryptedWriter(path, wrapping_key=key, context=path.name)
        self.count = 0
        self.columns: dict[str, None] = {}  # ordered set
        self.preview: list[dict[str, Any]] = []

    def add(self, record: Any) -> None:
        self.writer.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        flat = flatten(record)
        self.columns.update(dict.fromkeys(flat))
        if len(self.preview) < PREVIEW_ROWS:
            self.preview.append(flat)
        self.count += 1

    def lines(self) -> Iterator[bytes]:
        yield from _lines(iter_decrypted(self.path, wrapping_key=self.key, context=self.path.name))


class _Discard:
    """Where records of categories left out of the package go."""

    def add(self, record: Any) -> None:
        pass


_DISCARD: Any = _Discard()


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        rest += chunk
        *complete, rest = rest.split(b"\n")
        yield from (line for line in complete if line.strip())
    if rest.strip():
        yield rest


class _SystemSpools:
    def __init__(self, directory: Path, key: bytes, only: frozenset[str] | None = None) -> None:
        self.directory, self.key, self.only = directory, key, only
        self.by_category: dict[str, _Spool] = {}
        self.verbatim: list[SourceFile] = []
        self.skipped = 0

    def spool(self, category: str) -> _Spool:
        if self.only is not None and category not in self.only:
            return _DISCARD
        if category not in self.by_category:
            path = self.directory / f"{secrets.token_hex(8)}.spool"
            self.by_category[category] = _Spool(path, self.key)
        return self.by_category[category]

    def take(self, source: SourceFile) -> None:
        if source.format == "ndjson":
            for line in _lines(source.chunks()):
                try:
                    item = json.loads(line.decode())
                except ValueError:
                    self.skipped += 1
                    continue
                if isinstance(item, dict) and set(item) == {"category", "record"}:
                    self.spool(str(item["category"])).add(item["record"])
                else:
                    self.spool("records").add(item)
        elif source.size > JSON_IN_MEMORY_LIMIT:
            self.verbatim.append(source)
        else:
            data = json.loads(b"".join(source.chunks()) or b"{}")
            if not isinstance(data, dict):
                data = {"records": data if isinstance(data, list) else [data]}
            for category, records in data.items():
                spool = self.spool(str(category))
                for record in records if isinstance(records, list) else [records]:
                    spool.add(record)

    def close(self) -> None:
        for spool in self.by_category.values():
            spool.writer.close()


def build_package(
    path: Path,
    *,
    wrapping_key: bytes,
    context: str,
    signer: PackageSigner,
    request: dict[str, Any],
    systems: list[SystemInput],
    report: Any = None,
) -> BuiltPackage:
    """Write the encrypted package at ``path``. ``report`` renders ``report.html`` from the
    systems' summaries (None: no report, as for portability)."""
    work = path.parent / f".build-{secrets.token_hex(6)}"
    work.mkdir(parents=True)
    spool_key = secrets.token_bytes(32)
    writer = EncryptedWriter(path, wrapping_key=wrapping_key, context=context)
    sink = _ZipSink(writer)
    files: list[dict[str, Any]] = []
    described: list[dict[str, Any]] = []
    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            taken: set[str] = set()
            for system in systems:
                entry, written = _write_system(
                    zf, system, slug(system.name, taken), work, spool_key
                )
                described.append(entry)
                files.extend(written)
            if report is not None:
                html = report(described).encode()
                member = _Member(zf, "report.html")
                member.write(html)
                files.append(member.close())
            manifest = {
                "format": MANIFEST_FORMAT,
                "service": {"name": "dsr", "version": __version__},
                "request": request,
                "systems": [_manifest_entry(entry) for entry in described],
                "files": files,
            }
            body = json.dumps(manifest, ensure_ascii=False, indent=2).encode()
            for name, content in (
                ("manifest.json", body),
                ("manifest.jws", signer.sign_detached(body).encode()),
            ):
                info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w") as handle:
                    handle.write(content)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuiltPackage(size=sink.size, sha256=sink.sha256.hexdigest(), manifest=manifest)


def _manifest_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A system as the manifest lists it: no processing text, no preview rows."""
    categories = [
        {"name": c["name"], "count": c["count"], "file": c["file"]} for c in entry["categories"]
    ]
    return {
        **{k: v for k, v in entry.items() if k not in ("processing", "categories")},
        "categories": categories,
    }


def _write_system(
    zf: zipfile.ZipFile, system: SystemInput, name: str, work: Path, key: bytes
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spools = _SystemSpools(work, key, system.only_categories)
    for source in system.sources:
        spools.take(source)
    spools.close()
    written: list[dict[str, Any]] = []
    categories: list[dict[str, Any]] = []
    if spools.by_category:
        member = _Member(zf, f"data/{name}.json")
        _write_json(member, spools.by_category)
        written.append(member.close())
        taken: set[str] = set()
        for category, spool in spools.by_category.items():
            csv_path = f"data/{name}/{slug(category, taken)}.csv"
            member = _Member(zf, csv_path)
            _write_csv(member, spool)
            written.append(member.close())
            columns = list(spool.columns)
            categories.append(
                {
                    "name": category,
                    "count": spool.count,
                    "file": csv_path,
                    "columns": columns,
                    "rows": [row(flat, columns) for flat in spool.preview],
                }
            )
            os.unlink(spool.path)
    for index, source in enumerate(spools.verbatim, start=1):
        member = _Member(zf, f"data/{name}.upload-{index}.json")
        for chunk in source.chunks():
            member.write(chunk)
        written.append(member.close())
    entry: dict[str, Any] = {
        "name": system.name,
        "outcome": system.outcome,
        "categories": categories,
        "files": [f["path"] for f in written],
        "processing": system.processing,
    }
    if spools.skipped:
        entry["unreadable_lines"] = spools.skipped
    return entry, written


def _write_json(member: _Member, spools: dict[str, _Spool]) -> None:
    """``{"category": [record, ...], ...}``, one record per line."""
    buffer = bytearray(b"{")
    for c_index, (category, spool) in enumerate(spools.items()):
        buffer += b"," if c_index else b""
        buffer += b"\n  " + json.dumps(category, ensure_ascii=False).encode() + b": ["
        for r_index, line in enumerate(spool.lines()):
            buffer += (b",\n    " if r_index else b"\n    ") + line
            if len(buffer) >= _FLUSH_AT:
                member.write(bytes(buffer))
                buffer.clear()
        buffer += b"\n  ]" if spool.count else b"]"
    buffer += b"\n}\n"
    member.write(bytes(buffer))


def _write_csv(member: _Member, spool: _Spool) -> None:
    columns = list(spool.columns)
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\r\n")
    text.write("\ufeff")  # spreadsheets then read the file as UTF-8
    rows.writerow([cell(c) for c in columns])
    for line in spool.lines():
        rows.writerow(row(flatten(json.loads(line.decode())), columns))
        if text.tell() >= _FLUSH_AT:
            member.write(text.getvalue().encode())
            text.seek(0)
            text.truncate()
    member.write(text.getvalue().encode())
