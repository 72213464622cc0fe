"""Writing a package: a ZIP streamed straight into an encrypted file, in bounded memory.

For each system, its stored results (inline ``data``, JSON and NDJSON uploads) are read back
chunk by chunk and spooled one record per line into per-category files (encrypted with a
key that lives only in memory for the build), by ``app.exports.spools`` in a thread that
works on the next system while this module writes the previous one, or, for builds big
enough, by ``app.exports.workers`` in two worker processes. From the spools come
``data/<system>.json`` (one record per line, UTF-8, not ``\\u``-escaped) and
``data/<system>/<category>.csv`` (nested values in dotted columns). Then ``report.html``,
``manifest.json`` (every file with its size and SHA-256) and ``manifest.jws`` (its detached
signature). The ZIP is written with ``zipfile`` in streaming mode (data descriptors, ZIP64),
so no member is ever whole in memory, and its own SHA-256 is computed as it is written: it
is what ``export.sha256`` promises of the bytes served.

NDJSON uploads carry one record per line, as ``{"category": "...", "record": {...}}`` or
as a bare record (filed under ``records``). A JSON upload is ``{"<category>": [records]}``
like a result's ``data``; one larger than ``spools.JSON_IN_MEMORY_LIMIT`` is put in the package as
sent, without CSV (send NDJSON for that size).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
import secrets
import shutil
import time
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from isal import isal_zlib

from app import __version__
from app.exports import jsonio, workers
from app.exports.flatten import cell, cells
from app.exports.signing import PackageSigner
from app.exports.spools import (
    ROWS_AT,
    SourceFile,
    Spool,
    Spooler,
    SystemSpools,
    spool_lines,
)
from app.kit.streams import EncryptedWriter
from app.kit.text import utf8_json, utf8_shown

MANIFEST_FORMAT = "dsr-export/1"
__all__ = ["BuiltPackage", "SourceFile", "SystemInput", "build_package", "slug"]


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


def _open_member(archive: zipfile.ZipFile, path: str) -> IO[bytes]:
    """A member of ``archive`` open for writing, deflated by ISA-L at its level 1.

    Deflate was the largest single cost of writing a package with zlib even at level 1
    (about 220 MB of input per CPU-second here); ISA-L's level 1 writes the same format at
    a similar ratio about six times faster. ``zipfile`` has no way to be handed a
    compressor, so the member's zlib compressor, made when it was opened and not used yet,
    is replaced by an ISA-L one with the same interface (``compress``, ``flush``), raw
    deflate as ZIP wants it. On a ``zipfile`` without that attribute the member stays with
    zlib at level 1 (3.13 names the level ``ZipInfo.compress_level``; 3.11 reads
    ``_compresslevel``)."""
    info = zipfile.ZipInfo(path, date_time=time.gmtime()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    setattr(info, "_compresslevel", 1)  # noqa: B010
    handle = archive.open(info, "w", force_zip64=True)
    if getattr(handle, "_compressor", None) is not None:
        handle._compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)  # type: ignore[attr-defined]
    return handle


class _Member:
    """A ZIP member being written, with its own size and SHA-256 for the manifest."""

    def __init__(self, archive: zipfile.ZipFile, path: str) -> None:
        self.path = path
        self.handle = _open_member(archive, path)
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
    zf: zipfile.ZipFile | None = None
    try:
        # Not a with block: closing the ZIP after a failed member would raise in place of
        # the error that failed it.
        zf = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)
        taken: set[str] = set()
        spooler = workers.ProcessSpooler if workers.worth_it(systems) else Spooler
        with spooler(systems, work, spool_key) as spooled:
            for system, spools in zip(systems, spooled, strict=True):
                entry, written = _write_system(zf, system, spools, slug(system.name, taken))
                described.append(entry)
                files.extend(written)
        if report is not None:
            html = utf8_shown(report(described))
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
        body = utf8_json(json.dumps(manifest, ensure_ascii=False, indent=2))
        for name, content in (
            ("manifest.json", body),
            ("manifest.jws", signer.sign_detached(body).encode()),
        ):
            info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as handle:
                handle.write(content)
        zf.close()
        writer.close()
    except BaseException:
        if zf is not None:
            zf.fp = None  # the package is deleted: nothing more to write (nor on __del__)
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
    zf: zipfile.ZipFile, system: SystemInput, spools: SystemSpools, name: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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
            columns = list(spool.column_list)
            categories.append(
                {
                    "name": category,
                    "count": spool.count,
                    "file": csv_path,
                    "columns": columns,
                    "rows": [[flat.get(c, "") for c in columns] for flat in spool.preview],
                }
            )
            spool.delete()
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


def _write_json(member: _Member, spools: dict[str, Spool]) -> None:
    """``{"category": [record, ...], ...}``, one record per line: the spooled lines as they
    are, their newlines turned into separators a chunk at a time."""
    opening = b"{"
    for category, spool in spools.items():
        member.write(opening + b"\n  " + _json_key(category) + b": [")
        opening = b","
        if spool.count:
            member.write(b"\n    ")
        held = b""  # the last byte of the previous chunk: the final newline is not a separator
        for chunk in spool.json_chunks():
            member.write((held + chunk[:-1]).replace(b"\n", b",\n    "))
            held = chunk[-1:]
        member.write(b"\n  ]" if spool.count else b"]")
    member.write(b"\n}\n")


def _json_key(category: str) -> bytes:
    try:
        return jsonio.dumps(category, fast=True)
    except TypeError:  # a lone surrogate, which orjson does not write
        return jsonio.dumps(category, fast=False)


def _write_csv(member: _Member, spool: Spool) -> None:
    columns = spool.column_list
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\r\n")
    text.write("\ufeff")  # spreadsheets then read the file as UTF-8
    rows.writerow([cell(c) for c in columns])
    if spool.complete_from:  # rows written before the last column appeared: again, in full
        batch: list[list[Any]] = []
        lines = spool_lines(spool.json_chunks())
        for line, exact in itertools.islice(lines, spool.complete_from):
            flat = cells(jsonio.loads(line, checked=exact)[0])
            batch.append([flat.get(name, "") for name in columns])
            if len(batch) >= ROWS_AT:
                rows.writerows(batch)
                batch.clear()
                member.write(utf8_shown(text.getvalue()))
                text.seek(0)
                text.truncate()
        rows.writerows(batch)
        lines.close()
    member.write(utf8_shown(text.getvalue()))
    for chunk in spool.csv_chunks(spool.complete_offset):
        member.write(chunk)
