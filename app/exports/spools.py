"""A system's records sorted into per-category spools, in a thread of its own.

Assembly makes two passes: records are read from the stored results, parsed, flattened and
spooled by category (``Spool``), then each spool is copied into the package. The first pass
is Python work on every record; the second is mostly compression, hashing and encryption,
which release the GIL. ``Spooler`` runs the first pass of the next system in a thread while
the caller writes the previous one into the ZIP; the record work still holds the GIL, so
builds big enough are spooled in worker processes instead (``app.exports.workers``, the
same ``SystemSpools``, pickled back without their open writers). At most three
systems' spools exist at a time (one being written, one waiting, one being spooled); all of
them are files on disk, so memory stays bounded whatever the results' sizes.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from app.exports import jsonio
from app.exports.flatten import RowBuilder, cells, csv_text, row_builder
from app.kit.streams import EncryptedWriter, iter_decrypted
from app.kit.text import utf8_shown

if TYPE_CHECKING:
    from app.exports.assembly import SystemInput

JSON_IN_MEMORY_LIMIT = 64 * 1024 * 1024
FLUSH_AT = 256 * 1024
ROWS_AT = 512  # CSV rows formatted at once
PREVIEW_ROWS = 100  # records per category shown in report.html (all are in the files)
SHAPES = 8  # row builders a spool tries, most recently learnt first
MAX_LEARNT = 256  # row builders a spool compiles at most (then records of new shapes are walked)


@dataclass
class SourceFile:
    """One stored result file of a system, readable chunk by chunk. Defined here, not in
    ``assembly``, so that a worker process unpickling one imports only the spooling code."""

    format: str  # json | ndjson
    size: int
    chunks: Any  # a callable returning an iterator of plaintext chunks


def _scratch(path: Path, key: bytes) -> EncryptedWriter:
    """A spool file: encrypted like everything at rest, but not fsynced (it lives only for
    the build; a crash restarts the build)."""
    return EncryptedWriter(path, wrapping_key=key, context=path.name, durable=False)


class Spool:
    """One category's records, kept twice in encrypted temporary files: as JSON lines (for
    ``data/<system>.json``) and as CSV rows (for the category's CSV).

    Each record is parsed, flattened and written as a CSV row once, here. A row has a cell
    for every column known when it was written; the columns only grow, so the rows written
    since the last new column are complete and are copied into the package as they are. The
    rows before it (usually a handful: the column set settles after the first records) are
    written again from their JSON lines, with the final columns.

    Past the preview, a record of a shape seen before gets its row from that shape's
    compiled builder (``flatten.row_builder``, the last ``SHAPES`` shapes, rebuilt when a
    column is added); others are walked by ``cells``, and their shape is learnt. Rows are
    formatted ``ROWS_AT`` at a time by ``flatten.csv_text``.
    """

    def __init__(self, directory: Path, key: bytes) -> None:
        self.key = key
        self.json_path = directory / f"{secrets.token_hex(8)}.spool"
        self.csv_path = directory / f"{secrets.token_hex(8)}.spool"
        self.json = _scratch(self.json_path, key)
        self.csv = _scratch(self.csv_path, key)
        self.count = 0
        self.columns: dict[str, None] = {}  # ordered set
        self.column_list: list[str] = []
        self.preview: list[dict[str, Any]] = []
        self.lines = bytearray()
        self.rows: list[list[Any]] = []
        self.builders: list[RowBuilder] = []  # for the shapes of the last records
        self.positions: dict[str, int] = {}  # each column's place in a row
        self.learnt = 0
        self.csv_bytes = 0
        self.complete_from = 0  # the first record whose CSV row has every column
        self.complete_offset = 0  # where its row starts in the CSV spool

    def add(self, record: Any, line: bytes) -> None:
        """``record`` parsed, ``line`` its JSON text (one line, UTF-8)."""
        self.lines += line
        self.lines += b"\n"
        if self.builders:
            row = self.builders[0](record)
            if row is None and len(self.builders) > 1:
                row = self._other_shape(record)
            if row is not None:
                self.rows.append(row)
                self.count += 1
                if len(self.rows) >= ROWS_AT:
                    self._flush_rows()
                if len(self.lines) >= FLUSH_AT:
                    self.json.write(self.lines)
                    self.lines.clear()
                return
        self._add_cells(record)

    def _other_shape(self, record: Any) -> list[Any] | None:
        builders = self.builders
        for index in range(1, len(builders)):
            row = builders[index](record)
            if row is not None:
                builders.insert(0, builders.pop(index))
                return row
        return None

    def _add_cells(self, record: Any) -> None:
        flat = cells(record)
        if list(flat) == self.column_list:
            self.rows.append(list(flat.values()))
        else:
            columns = self.columns
            new = [name for name in flat if name not in columns]
            if new:
                self._flush_rows()
                columns.update(dict.fromkeys(new))
                self.column_list.extend(new)
                self.complete_from, self.complete_offset = self.count, self.csv_bytes
                self.builders.clear()  # their rows are one column short now
                self.positions = {name: n for n, name in enumerate(self.column_list)}
            get = flat.get
            self.rows.append([get(name, "") for name in self.column_list])
        if len(self.preview) < PREVIEW_ROWS:
            self.preview.append(flat)
        elif self.learnt < MAX_LEARNT:
            self._learn(record)
        self.count += 1
        if len(self.rows) >= ROWS_AT:
            self._flush_rows()
        if len(self.lines) >= FLUSH_AT:
            self.json.write(self.lines)
            self.lines.clear()

    def _learn(self, record: Any) -> None:
        """A row builder for ``record``'s shape, tried first from the next record on."""
        self.learnt += 1
        built = row_builder(record, self.positions)
        if built is not None:
            self.builders.insert(0, built)
            del self.builders[SHAPES:]

    def _flush_rows(self) -> None:
        if self.rows:
            data = utf8_shown(csv_text(self.rows))  # a lone surrogate shown as U+FFFD
            self.rows.clear()
            self.csv.write(data)
            self.csv_bytes += len(data)

    def close(self) -> None:
        self._flush_rows()
        self.json.write(self.lines)
        self.lines.clear()
        self.json.close()
        self.csv.close()

    def __getstate__(self) -> dict[str, Any]:
        """A closed spool as the ZIP writer reads it (sent back from a worker process):
        its files' paths and key, counts, columns and preview, no open writer."""
        return {name: self.__dict__[name] for name in _CLOSED_STATE}

    def json_chunks(self) -> Iterator[bytes]:
        return iter_decrypted(self.json_path, wrapping_key=self.key, context=self.json_path.name)

    def csv_chunks(self, start: int) -> Iterator[bytes]:
        return iter_decrypted(
            self.csv_path, wrapping_key=self.key, context=self.csv_path.name, start=start
        )

    def delete(self) -> None:
        for path in (self.json_path, self.csv_path):
            path.unlink(missing_ok=True)


_CLOSED_STATE = (
    "key",
    "json_path",
    "csv_path",
    "count",
    "column_list",
    "preview",
    "csv_bytes",
    "complete_from",
    "complete_offset",
)


class _Discard:
    """Where records of categories left out of the package go."""

    def add(self, record: Any, line: bytes) -> None:
        pass


_DISCARD: Any = _Discard()


def line_blocks(chunks: Iterable[bytes]) -> Generator[tuple[bytes, list[bytes]], None, None]:
    """``(block, lines)``: the text of whole lines read so far and its non-blank lines, so
    that what can be told of many lines at once (no long digit runs, no escapes) is looked
    for once per block, not per line."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        cut = rest.rfind(b"\n") + 1
        if cut:
            block, rest = rest[:cut], rest[cut:]
            yield block, [line for line in block.split(b"\n") if line.strip()]
    if rest.strip():
        yield rest, [rest]


def spool_lines(chunks: Iterable[bytes]) -> Generator[tuple[bytes, bool], None, None]:
    """Non-blank lines, each with whether it is free of the long digit runs that orjson
    cannot read exactly (checked once per block of lines, not per line)."""
    for block, lines in line_blocks(chunks):
        exact = jsonio.exact(block)
        for line in lines:
            yield line, exact


class SystemSpools:
    def __init__(self, directory: Path, key: bytes, only: frozenset[str] | None = None) -> None:
        self.directory, self.key, self.only = directory, key, only
        self.by_category: dict[str, Spool] = {}
        self.verbatim: list[SourceFile] = []
        self.skipped = 0

    def spool(self, category: str) -> Spool:
        if self.only is not None and category not in self.only:
            return _DISCARD
        if category not in self.by_category:
            self.by_category[category] = Spool(self.directory, self.key)
        return self.by_category[category]

    def take(self, source: SourceFile, stop: threading.Event | None = None) -> None:
        """Spool ``source``'s records; raise ``Stopped`` soon after ``stop`` is set."""
        chunks = source.chunks() if stop is None else _until(stop, source.chunks())
        if source.format == "ndjson":
            self._take_lines(chunks)
        elif source.size > JSON_IN_MEMORY_LIMIT:
            self.verbatim.append(source)
        else:
            data, fast = jsonio.loads(b"".join(chunks) or b"{}")
            if not isinstance(data, dict):
                data = {"records": data if isinstance(data, list) else [data]}
            for category, records in data.items():
                spool = self.spool(str(category))
                for record in records if isinstance(records, list) else [records]:
                    spool.add(record, jsonio.dumps(record, fast=fast))

    def _take_lines(self, chunks: Iterable[bytes]) -> None:
        spool_for, dumps, parse = self.spool, jsonio.dumps, orjson.loads
        prefixes: dict[str, bytes] = {}
        for block, lines in line_blocks(chunks):
            exact = jsonio.exact(block)
            escaped = b"\\" in block
            for line in lines:
                if exact:
                    try:
                        item, fast = parse(line), True
                    except ValueError:
                        item, fast = _read_slowly(line)
                else:
                    item, fast = _read_slowly(line)
                if item is _UNREADABLE:
                    self.skipped += 1
                    continue
                if (
                    type(item) is dict
                    and len(item) == 2
                    and "category" in item
                    and "record" in item
                ):
                    record, category = item["record"], item["category"]
                    text = None
                    if fast and type(category) is str:
                        prefix = prefixes.get(category)
                        if prefix is None:
                            prefix = prefixes[category] = _prefix(category)
                        text = _record_text(line, prefix, escaped)
                    spool_for(str(category)).add(record, text or dumps(record, fast=fast))
                elif fast and not (escaped and b"\\u" in line):
                    spool_for("records").add(item, line.strip())
                else:
                    spool_for("records").add(item, dumps(item, fast=fast))

    def close(self) -> None:
        for spool in self.by_category.values():
            spool.close()

    def delete(self) -> None:
        for spool in self.by_category.values():
            spool.delete()

    def abort(self) -> None:
        for spool in self.by_category.values():
            spool.json.abort()
            spool.csv.abort()


_UNREADABLE: Any = object()


def _read_slowly(line: bytes) -> tuple[Any, bool]:
    """A line orjson did not read, or that may hold numbers it would not keep exactly."""
    try:
        return jsonio.loads(line)
    except ValueError:
        return _UNREADABLE, False


def _prefix(category: str) -> bytes:
    return b'{"category": ' + orjson.dumps(category) + b', "record": '


def _record_text(line: bytes, prefix: bytes, escaped: bool) -> bytes | None:
    """The record's own text in an NDJSON line ``{"category": "...", "record": ...}`` as
    most senders write it (saves writing the record again; ``prefix``: the line's start
    up to the record, for its category), or None when that cannot be told for sure: other
    spacing or key order, ``\\u`` escapes (the package is not escaped; ``escaped``: the
    line may hold some), or a key written twice (only one of the values was read). Only
    for lines that orjson read (valid JSON, an object of exactly these two keys)."""
    if escaped and b"\\u" in line:
        return None
    line = line.rstrip()
    if not (line.startswith(prefix) and line.endswith(b"}")):
        return None
    # Without \u escapes a key "record" or "category" is only ever written as these bytes.
    if line.count(b'"record"') != 1 or line.count(b'"category"') != 1:
        return None
    return line[len(prefix) : -1].strip()


class Stopped(Exception):
    """The spooler was told to stop (the package is not being written any more)."""


def _until(stop: threading.Event, chunks: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        if stop.is_set():
            raise Stopped
        yield chunk


class Spooler:
    """Spools the systems one after the other in a background thread; iterating gives each
    system's closed spools, in order. Leaving the ``with`` block stops the thread and
    waits for it (its spool files are the caller's to delete with the work directory)."""

    def __init__(self, systems: list[SystemInput], directory: Path, key: bytes) -> None:
        self._systems, self._directory, self._key = systems, directory, key
        self._done: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="export-spooler", daemon=True)

    def __enter__(self) -> Iterator[SystemSpools]:
        self._thread.start()
        return self._results()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _results(self) -> Iterator[SystemSpools]:
        for _ in self._systems:
            kind, value = self._done.get()
            if kind == "error":
                raise value
            yield value

    def _run(self) -> None:
        try:
            for system in self._systems:
                spools = SystemSpools(self._directory, self._key, system.only_categories)
                try:
                    for source in system.sources:
                        spools.take(source, self._stop)
                    spools.close()
                except BaseException:
                    spools.abort()
                    raise
                if not self._hand_over(("spools", spools)):
                    return
        except Stopped:
            return
        except BaseException as exc:  # handed to the caller, raised there
            self._hand_over(("error", exc))

    def _hand_over(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._done.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
