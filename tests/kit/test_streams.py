"""Chunked file encryption: round trips, Range reads, bounded memory, and every tampering
(a flipped byte, a cut, an extra or swapped chunk, a wrong key or context) refused."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.kit.streams import (
    DEFAULT_CHUNK_SIZE,
    EncryptedWriter,
    StreamIntegrityError,
    iter_decrypted,
    plaintext_size,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CONTEXT = "package-0001"
CHUNK = 64
TAG = 16
# magic 4, version 1, chunk size 4, wrap nonce 12, wrapped key 32 + tag 16, nonce prefix 7
HEADER = 76


def encrypt(
    path: Path,
    pieces: Iterable[bytes | bytearray | memoryview],
    *,
    chunk_size: int = CHUNK,
    context: str = CONTEXT,
) -> int:
    with EncryptedWriter(path, wrapping_key=KEY, context=context, chunk_size=chunk_size) as w:
        for piece in pieces:
            w.write(piece)
    return plaintext_size(path)


def decrypt(
    path: Path,
    *,
    key: bytes = KEY,
    context: str = CONTEXT,
    start: int = 0,
    end: int | None = None,
) -> bytes:
    return b"".join(iter_decrypted(path, wrapping_key=key, context=context, start=start, end=end))


def chunk_at(index: int) -> slice:
    """Where sealed chunk ``index`` sits in a file (a full chunk; slicing clamps the last)."""
    begin = HEADER + index * (CHUNK + TAG)
    return slice(begin, begin + CHUNK + TAG)


def payload(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 5 * CHUNK + 3, 17 * CHUNK]
)
def test_round_trip_at_chunk_edges(tmp_path: Path, size: int) -> None:
    path, data = tmp_path / "f.enc", payload(size)
    writer = EncryptedWriter(path, wrapping_key=KEY, context=CONTEXT, chunk_size=CHUNK)
    writer.write(data)
    assert writer.close() == size
    assert decrypt(path) == data
    assert plaintext_size(path) == size
    # full chunks, then one final chunk shorter than a chunk (empty when the size is aligned)
    assert path.stat().st_size == HEADER + size + (size // CHUNK + 1) * TAG


def test_default_chunk_size_and_chunk_sized_pieces(tmp_path: Path) -> None:
    path, data = tmp_path / "f.enc", os.urandom(3 * DEFAULT_CHUNK_SIZE + 5)
    with EncryptedWriter(path, wrapping_key=KEY, context=CONTEXT) as writer:
        writer.write(data)
    assert [len(piece) for piece in iter_decrypted(path, wrapping_key=KEY, context=CONTEXT)] == [
        DEFAULT_CHUNK_SIZE,
        DEFAULT_CHUNK_SIZE,
        DEFAULT_CHUNK_SIZE,
        5,
    ]
    assert decrypt(path) == data


def test_many_small_and_empty_writes(tmp_path: Path) -> None:
    path, data = tmp_path / "f.enc", payload(10 * CHUNK + 7)
    pieces = [data[i : i + 1] for i in range(len(data))]
    assert encrypt(path, [b"", *pieces, b""]) == len(data)
    assert decrypt(path) == data


@pytest.mark.parametrize("durable", [True, False])
def test_only_durable_files_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    path, data = tmp_path / "f.enc", payload(3 * CHUNK + 1)
    writer = EncryptedWriter(
        path, wrapping_key=KEY, context=CONTEXT, chunk_size=CHUNK, durable=durable
    )
    writer.write(data)
    writer.close()
    assert len(synced) == (1 if durable else 0)
    assert decrypt(path) == data


def test_writes_of_other_buffer_types(tmp_path: Path) -> None:
    path, data = tmp_path / "f.enc", payload(3 * CHUNK + 1)
    encrypt(path, [bytearray(data[:100]), memoryview(data)[100:]])
    assert decrypt(path) == data


def test_same_plaintext_encrypts_differently(tmp_path: Path) -> None:
    data = payload(2 * CHUNK)
    encrypt(tmp_path / "a.enc", [data])
    encrypt(tmp_path / "b.enc", [data])
    assert (tmp_path / "a.enc").read_bytes() != (tmp_path / "b.enc").read_bytes()


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=1500),
    chunk_size=st.integers(min_value=1, max_value=200),
    cuts=st.lists(st.integers(min_value=0, max_value=1500), max_size=12),
)
def test_round_trip_whatever_the_write_sizes(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk_size: int, cuts: list[int]
) -> None:
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    pieces = [data[a:b] for a, b in pairwise(bounds)]
    path = tmp_path_factory.mktemp("streams") / "f.enc"
    assert encrypt(path, pieces, chunk_size=chunk_size) == len(data)
    assert decrypt(path) == data


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=1200),
    chunk_size=st.integers(min_value=1, max_value=150),
    choice=st.data(),
)
def test_range_reads_equal_the_plaintext_slice(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk_size: int, choice: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("streams") / "f.enc"
    encrypt(path, [data], chunk_size=chunk_size)
    start = choice.draw(st.integers(min_value=0, max_value=len(data)), label="start")
    end = choice.draw(st.integers(min_value=start, max_value=len(data)), label="end")
    assert decrypt(path, start=start, end=end) == data[start:end]
    assert decrypt(path, start=start) == data[start:]


def test_a_range_reads_only_its_chunks(tmp_path: Path) -> None:
    path, data = tmp_path / "f.enc", payload(4 * CHUNK + 10)
    encrypt(path, [data])
    raw = bytearray(path.read_bytes())
    raw[chunk_at(3).start] ^= 1  # damage the fourth chunk only
    path.write_bytes(raw)
    assert decrypt(path, start=5, end=3 * CHUNK) == data[5 : 3 * CHUNK]
    with pytest.raises(StreamIntegrityError, match="chunk 3"):
        decrypt(path, start=3 * CHUNK, end=3 * CHUNK + 1)
    with pytest.raises(StreamIntegrityError):
        decrypt(path)


@pytest.mark.parametrize(("start", "end"), [(-1, None), (5, 4), (0, 3 * CHUNK + 1), (200, None)])
def test_a_range_outside_the_plaintext_is_refused(
    tmp_path: Path, start: int, end: int | None
) -> None:
    path = tmp_path / "f.enc"
    encrypt(path, [payload(3 * CHUNK)])
    with pytest.raises(ValueError, match="outside") as raised:
        decrypt(path, start=start, end=end)
    assert not isinstance(raised.value, StreamIntegrityError)


def test_memory_stays_near_one_chunk_whatever_the_write_size(tmp_path: Path) -> None:
    piece, chunk_size = os.urandom(1024 * 1024), 16 * 1024
    tracemalloc.start()
    try:
        with EncryptedWriter(
            tmp_path / "big.enc", wrapping_key=KEY, context=CONTEXT, chunk_size=chunk_size
        ) as writer:
            for _ in range(50):
                writer.write(piece)
                writer.write(piece[:1000])  # leaves a partial chunk buffered
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * chunk_size  # a 1 MiB piece copied even once would break this
    assert plaintext_size(tmp_path / "big.enc") == 50 * (len(piece) + 1000)


def test_every_flipped_byte_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "f.enc"
    encrypt(path, [payload(2 * CHUNK + 24)])
    original = path.read_bytes()
    for position in range(len(original)):
        raw = bytearray(original)
        raw[position] ^= 0x01
        path.write_bytes(raw)
        with pytest.raises(StreamIntegrityError):
            decrypt(path)


@pytest.mark.parametrize("size", [3 * CHUNK + 10, 3 * CHUNK])
@pytest.mark.parametrize("chunks_kept", [0, 1, 2, 3])
def test_a_file_cut_at_a_chunk_boundary_is_refused(
    tmp_path: Path, size: int, chunks_kept: int
) -> None:
    path = tmp_path / "f.enc"
    encrypt(path, [payload(size)])
    path.write_bytes(path.read_bytes()[: HEADER + chunks_kept * (CHUNK + TAG)])
    with pytest.raises(StreamIntegrityError, match="truncated"):
        plaintext_size(path)
    with pytest.raises(StreamIntegrityError):
        decrypt(path)


@pytest.mark.parametrize("cut", [1, TAG, TAG + 1, CHUNK])
def test_a_file_cut_inside_a_chunk_is_refused(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "f.enc"
    encrypt(path, [payload(3 * CHUNK + 10)])
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(StreamIntegrityError):
        decrypt(path)


@pytest.mark.parametrize("copied", [0, 1, 2, 3])
def test_an_appended_chunk_is_refused(tmp_path: Path, copied: int) -> None:
    path = tmp_path / "f.enc"
    encrypt(path, [payload(3 * CHUNK + 10)])
    raw = path.read_bytes()
    path.write_bytes(raw + raw[chunk_at(copied)])
    with pytest.raises(StreamIntegrityError):
        decrypt(path)


def test_swapped_chunks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.enc"
    encrypt(path, [payload(3 * CHUNK + 10)])
    raw = bytearray(path.read_bytes())
    first, second = chunk_at(0), chunk_at(1)
    raw[first], raw[second] = raw[second], raw[first]
    path.write_bytes(raw)
    with pytest.raises(StreamIntegrityError, match="chunk 0"):
        decrypt(path)


def test_a_chunk_from_another_file_is_refused(tmp_path: Path) -> None:
    data = payload(3 * CHUNK)
    encrypt(tmp_path / "a.enc", [data])
    encrypt(tmp_path / "b.enc", [data])  # same key, context and plaintext
    raw, other = bytearray((tmp_path / "a.enc").read_bytes()), (tmp_path / "b.enc").read_bytes()
    raw[chunk_at(1)] = other[chunk_at(1)]
    (tmp_path / "a.enc").write_bytes(raw)
    with pytest.raises(StreamIntegrityError, match="chunk 1"):
        decrypt(tmp_path / "a.enc")


@pytest.mark.parametrize("size", [0, 2 * CHUNK + 5])
@pytest.mark.parametrize(("key", "context"), [(OTHER_KEY, CONTEXT), (KEY, "package-0002")])
def test_wrong_key_or_context_is_refused_before_any_byte(
    tmp_path: Path, size: int, key: bytes, context: str
) -> None:
    path = tmp_path / "f.enc"
    encrypt(path, [payload(size)])
    with pytest.raises(StreamIntegrityError, match="wrong key or context"):
        iter_decrypted(path, wrapping_key=key, context=context)  # raises before iterating


@pytest.mark.parametrize("content", [b"", b"DSRS\x01", b"PK\x03\x04" + bytes(200)])
def test_a_file_that_is_not_a_stream_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f.enc"
    path.write_bytes(content)
    with pytest.raises(StreamIntegrityError):
        plaintext_size(path)
    with pytest.raises(StreamIntegrityError):
        decrypt(path)


def test_abort_deletes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.enc"
    writer = EncryptedWriter(path, wrapping_key=KEY, context=CONTEXT, chunk_size=CHUNK)
    writer.write(payload(5 * CHUNK))
    writer.abort()
    assert not path.exists()
    writer.abort()  # harmless twice
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x")
    with pytest.raises(ValueError, match="closed"):
        writer.close()


def test_an_exception_inside_with_deletes_the_file(tmp_path: Path) -> None:
    def download(path: Path) -> None:
        with EncryptedWriter(path, wrapping_key=KEY, context=CONTEXT) as writer:
            writer.write(payload(1000))
            raise RuntimeError("connector hung up")

    with pytest.raises(RuntimeError, match="connector hung up"):
        download(tmp_path / "f.enc")
    assert not (tmp_path / "f.enc").exists()


def test_a_closed_writer_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "f.enc"
    with EncryptedWriter(path, wrapping_key=KEY, context=CONTEXT) as writer:
        writer.write(b"abc")
        assert writer.close() == 3  # closing early inside the block is fine
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"d")
    assert decrypt(path) == b"abc"


@pytest.mark.parametrize(("key", "chunk_size"), [(b"short", CHUNK), (KEY, 0), (KEY, 1 << 30)])
def test_bad_parameters_create_no_file(tmp_path: Path, key: bytes, chunk_size: int) -> None:
    path = tmp_path / "f.enc"
    with pytest.raises(ValueError, match="must be"):
        EncryptedWriter(path, wrapping_key=key, context=CONTEXT, chunk_size=chunk_size)
    assert not path.exists()
