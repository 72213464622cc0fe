"""Encryption at rest for large files, in bounded memory and with random access.

Connector results (up to 5 GiB, streamed in over HTTP) and export packages are too large for
``Sealer``, which seals a value in one piece. Here a file is cut into fixed-size chunks, each
sealed on its own with AES-256-GCM (the STREAM construction of Hoang, Reyhanitabar, Rogaway
and Vizár): a writer holds about one chunk in memory whatever the file's size, and a reader
serving an HTTP Range request decrypts only the chunks the range touches.

Layout (all integers big-endian)::

    header  b"DSRS" | version (1) | chunk size (4) | wrap nonce (12) | wrapped key (48)
            | nonce prefix (7)
    chunks  AESGCM(file key, nonce = prefix | index (4) | final flag (1)) of each chunk

Every file has its own random 256-bit key, stored wrapped (AES-GCM) under the caller's
wrapping key, with the caller's context (a job or package id) and the other header fields as
associated data: a wrong key, a wrong context or any change to the header fails the unwrap.
Every chunk but the last holds exactly ``chunk_size`` bytes; the last holds fewer, possibly
none, and is the only one sealed with the final flag set. The index and the flag in the nonce
detect reordered, dropped, appended and truncated chunks; the per-file key detects chunks
copied from another file. Since the sizes are fixed, the plaintext size and each offset's chunk
follow from the file size alone.

What a read verifies is what it reads: a read that reaches the end of the plaintext always
authenticates the final chunk (so detects truncation and extension), a read of a middle range
only the chunks it covers. Nothing detects the replacement of a whole file by another one
sealed under the same wrapping key and context (an older version of the same package).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"DSRS"
VERSION = 1
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024

KEY_BYTES = 32
NONCE_BYTES = 12
PREFIX_BYTES = 7
TAG_BYTES = 16
MAX_CHUNKS = 1 << 32  # the index is 4 bytes
# magic, version, chunk size, wrap nonce, wrapped file key, nonce prefix
_HEADER = struct.Struct(f">4sBI{NONCE_BYTES}s{KEY_BYTES + TAG_BYTES}s{PREFIX_BYTES}s")


class StreamIntegrityError(ValueError):
    """The file is not what was written: tampered, truncated, extended, or opened with the
    wrong key or context."""


@dataclass(frozen=True)
class _Header:
    chunk_size: int
    wrap_nonce: bytes
    wrapped_key: bytes
    prefix: bytes

    def encode(self) -> bytes:
        return _HEADER.pack(
            MAGIC, VERSION, self.chunk_size, self.wrap_nonce, self.wrapped_key, self.prefix
        )


@dataclass(frozen=True)
class _Layout:
    chunk_count: int
    plaintext_size: int


def _check_parameters(wrapping_key: bytes, chunk_size: int) -> None:
    if len(wrapping_key) != KEY_BYTES:
        raise ValueError(f"wrapping key must be {KEY_BYTES} bytes")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE}")


def _chunk_nonce(prefix: bytes, index: int, *, final: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


def _key_binding(chunk_size: int, prefix: bytes, context: str) -> bytes:
    """What the wrapped key is bound to: the other header fields, then the context."""
    fixed = MAGIC + bytes([VERSION]) + chunk_size.to_bytes(4, "big") + prefix
    return fixed + context.encode()


def _new_header(file_key: bytes, *, wrapping_key: bytes, context: str, chunk_size: int) -> _Header:
    wrap_nonce, prefix = os.urandom(NONCE_BYTES), os.urandom(PREFIX_BYTES)
    binding = _key_binding(chunk_size, prefix, context)
    wrapped = AESGCM(wrapping_key).encrypt(wrap_nonce, file_key, binding)
    return _Header(chunk_size, wrap_nonce, wrapped, prefix)


def _unwrap_key(header: _Header, *, wrapping_key: bytes, context: str) -> bytes:
    if len(wrapping_key) != KEY_BYTES:
        raise ValueError(f"wrapping key must be {KEY_BYTES} bytes")
    try:
        binding = _key_binding(header.chunk_size, header.prefix, context)
        return AESGCM(wrapping_key).decrypt(header.wrap_nonce, header.wrapped_key, binding)
    except InvalidTag:
        raise StreamIntegrityError("wrong key or context, or a tampered header") from None


class EncryptedWriter:
    """Encrypts what is written to ``path``, one chunk at a time.

    ``close()`` seals the final chunk and fsyncs (unless ``durable`` is False: scratch files
    that no crash needs to find again); ``abort()`` deletes the file. As a context
    manager it closes on success and aborts on an exception. Writing goes to ``path`` itself:
    the caller picks a temporary name and renames once closed.
    """

    def __init__(
        self,
        path: Path,
        *,
        wrapping_key: bytes,
        context: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        durable: bool = True,
    ) -> None:
        _check_parameters(wrapping_key, chunk_size)
        self._durable = durable
        file_key = os.urandom(KEY_BYTES)
        header = _new_header(
            file_key, wrapping_key=wrapping_key, context=context, chunk_size=chunk_size
        )
        self._path = path
        self._aead = AESGCM(file_key)
        self._prefix = header.prefix
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._index = 0
        self._size = 0
        self._file: BinaryIO | None = path.open("wb")
        try:
            self._file.write(header.encode())
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._require_open()
        view = memoryview(data).cast("B")
        self._size += len(view)
        while view:
            if not self._buffer and len(view) >= self._chunk_size:
                self._seal(view[: self._chunk_size], final=False)  # no copy into the buffer
                view = view[self._chunk_size :]
                continue
            room = self._chunk_size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == self._chunk_size:
                self._seal(self._buffer, final=False)
                self._buffer.clear()

    def close(self) -> int:
        """Seal the final chunk (shorter than a chunk, maybe empty), fsync, return the
        plaintext size."""
        file = self._require_open()
        try:
            self._seal(self._buffer, final=True)
            self._buffer.clear()
            file.flush()
            if self._durable:
                os.fsync(file.fileno())
        finally:
            self._file = None
            file.close()
        return self._size

    def abort(self) -> None:
        """Close without sealing and delete the file; safe to call in any state."""
        file, self._file = self._file, None
        self._buffer.clear()
        if file is not None:
            file.close()
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> EncryptedWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif self._file is not None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise

    def _require_open(self) -> BinaryIO:
        if self._file is None:
            raise ValueError("writer is closed")
        return self._file

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, final: bool) -> None:
        if self._index >= MAX_CHUNKS:
            raise ValueError("too many chunks for a 4-byte index: use a larger chunk size")
        nonce = _chunk_nonce(self._prefix, self._index, final=final)
        self._require_open().write(self._aead.encrypt(nonce, plaintext, None))
        self._index += 1


def _read_header(path: Path) -> tuple[_Header, _Layout]:
    with path.open("rb") as file:
        raw = file.read(_HEADER.size)
        file_size = os.fstat(file.fileno()).st_size
    if len(raw) < _HEADER.size:
        raise StreamIntegrityError("file too short for a header")
    magic, version, chunk_size, wrap_nonce, wrapped_key, prefix = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise StreamIntegrityError("not an encrypted stream")
    if version != VERSION:
        raise StreamIntegrityError(f"unsupported stream version {version}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise StreamIntegrityError("chunk size out of range")
    header = _Header(chunk_size, wrap_nonce, wrapped_key, prefix)
    return header, _layout(chunk_size, file_size - _HEADER.size)


def _layout(chunk_size: int, body_size: int) -> _Layout:
    """Full chunks, then one final chunk of at least a tag: anything else was cut or padded."""
    full_chunks, final_sealed = divmod(body_size, chunk_size + TAG_BYTES)
    if final_sealed < TAG_BYTES:
        raise StreamIntegrityError("truncated: the final chunk is missing")
    if full_chunks + 1 > MAX_CHUNKS:
        raise StreamIntegrityError("more chunks than a 4-byte index allows")
    plaintext_size = full_chunks * chunk_size + final_sealed - TAG_BYTES
    return _Layout(full_chunks + 1, plaintext_size)


def plaintext_size(path: Path) -> int:
    """The decrypted size, from the header and the file size only (no key, nothing verified)."""
    return _read_header(path)[1].plaintext_size


def _chunks_for(layout: _Layout, chunk_size: int, start: int, end: int) -> range:
    """The chunks holding [start, end); a read to the end also takes the final chunk."""
    if end == layout.plaintext_size:
        return range(start // chunk_size, layout.chunk_count)
    if start == end:
        return range(0)
    return range(start // chunk_size, (end - 1) // chunk_size + 1)


def iter_decrypted(
    path: Path,
    *,
    wrapping_key: bytes,
    context: str,
    start: int = 0,
    end: int | None = None,
) -> Iterator[bytes]:
    """Plaintext bytes [start, end) of ``path`` (``end`` None: to the end), a chunk at a time.

    The header, key and context are checked before this returns, so a caller can still answer
    with an error; a tampered chunk raises ``StreamIntegrityError`` during the iteration.
    A range outside the plaintext raises a plain ``ValueError``.
    """
    header, layout = _read_header(path)
    file_key = _unwrap_key(header, wrapping_key=wrapping_key, context=context)
    end = layout.plaintext_size if end is None else end
    if not 0 <= start <= end <= layout.plaintext_size:
        raise ValueError(f"range [{start}, {end}) outside 0..{layout.plaintext_size}")
    chunks = _chunks_for(layout, header.chunk_size, start, end)
    return _decrypt_chunks(path, header, layout, AESGCM(file_key), chunks, start, end)


def _decrypt_chunks(
    path: Path,
    header: _Header,
    layout: _Layout,
    aead: AESGCM,
    chunks: range,
    start: int,
    end: int,
) -> Iterator[bytes]:
    if not chunks:
        return
    chunk_size = header.chunk_size
    with path.open("rb") as file:
        file.seek(_HEADER.size + chunks.start * (chunk_size + TAG_BYTES))
        for index in chunks:
            final = index == layout.chunk_count - 1
            offset = index * chunk_size
            length = (layout.plaintext_size - offset if final else chunk_size) + TAG_BYTES
            sealed = file.read(length)
            if len(sealed) != length:
                raise StreamIntegrityError("file shrank while it was read")
            nonce = _chunk_nonce(header.prefix, index, final=final)
            try:
                plaintext = aead.decrypt(nonce, sealed, None)
            except InvalidTag:
                raise StreamIntegrityError(f"chunk {index} failed authentication") from None
            piece = plaintext[max(start - offset, 0) : end - offset]
            if piece:
                yield piece
