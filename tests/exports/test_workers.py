"""Systems spooled in worker processes: the same package as with the spooling thread, and a
worker's error raised as it was raised there, leaving no file and no process behind."""

from __future__ import annotations

import io
import json
import multiprocessing
import pickle
import zipfile
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.connectors import results
from app.exports import assembly, workers
from app.exports.assembly import SourceFile, SystemInput, build_package
from app.exports.signing import PackageSigner
from app.kit.streams import EncryptedWriter, StreamIntegrityError, iter_decrypted

KEY = bytes(range(32))
pytestmark = pytest.mark.xdist_group("worker-processes")


def _stored(path: Path, data: bytes) -> SourceFile:
    writer = EncryptedWriter(path, wrapping_key=KEY, context=path.name)
    writer.write(data)
    size = writer.close()
    return SourceFile(
        format="ndjson",
        size=size,
        chunks=partial(iter_decrypted, path, wrapping_key=KEY, context=path.name),
    )


def _systems(tmp_path: Path) -> list[SystemInput]:
    results = tmp_path / "results"
    results.mkdir()
    systems = []
    for n in range(4):
        items: list[Any] = [
            {"category": ["orders", "visits"][i % 2], "record": {"id": i, "n": n, "é": "ü"}}
            for i in range(300)
        ]
        items.insert(150, {"category": "orders", "record": {"id": -1, "late": {"x": [1, 2]}}})
        lines = "".join(json.dumps(item) + "\n" for item in items) + "not json\n"
        systems.append(
            SystemInput(
                name=f"System {n}",
                outcome="found",
                processing={},
                sources=[_stored(results / f"s{n}.bin", lines.encode())],
                only_categories=frozenset({"orders"}) if n == 3 else None,
            )
        )
    return systems


def _members(tmp_path: Path, name: str, systems: list[SystemInput]) -> dict[str, bytes]:
    path = tmp_path / name
    built = build_package(
        path,
        wrapping_key=KEY,
        context="test",
        signer=PackageSigner(bytes(32)),
        request={"id": "req_1"},
        systems=systems,
        report=lambda described: json.dumps(described),
    )
    raw = b"".join(iter_decrypted(path, wrapping_key=KEY, context="test"))
    archive = zipfile.ZipFile(io.BytesIO(raw))
    members = {info.filename: archive.read(info) for info in archive.infolist()}
    assert json.loads(members["manifest.json"]) == built.manifest
    return members


def test_the_package_is_the_one_the_thread_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    systems = _systems(tmp_path)
    assert not workers.worth_it(systems)  # small: spooled in the thread
    threaded = _members(tmp_path, "threaded.enc", systems)
    monkeypatch.setattr(workers, "MIN_BYTES", 0)
    assert workers.worth_it(systems)
    spawned = []
    real = workers.ProcessSpooler

    def spooler(*args: Any) -> workers.ProcessSpooler:
        spawned.append(True)
        return real(*args)

    monkeypatch.setattr(workers, "ProcessSpooler", spooler)
    in_processes = _members(tmp_path, "processes.enc", systems)
    assert spawned
    assert in_processes.keys() == threaded.keys()
    for name in threaded:
        if name != "manifest.jws":  # an ECDSA signature: a fresh one each time
            assert in_processes[name] == threaded[name], name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "processes.enc",
        "results",
        "threaded.enc",
    ]
    assert not multiprocessing.active_children()


def test_a_closure_or_a_single_system_stays_in_the_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(workers, "MIN_BYTES", 0)
    systems = _systems(tmp_path)
    assert not workers.worth_it(systems[:1])
    assert workers.worth_it(systems)
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 1)
    assert not workers.worth_it(systems)  # one core: processes would only add their cost
    monkeypatch.undo()
    monkeypatch.setattr(workers, "MIN_BYTES", 0)
    systems[1].sources.append(SourceFile(format="json", size=2, chunks=lambda: iter([b"{}"])))
    assert not workers.worth_it(systems)


def test_a_failing_result_in_a_worker_is_the_error_raised_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "MIN_BYTES", 0)
    systems = _systems(tmp_path)
    stored = tmp_path / "results" / "s2.bin"
    data = bytearray(stored.read_bytes())
    data[-20] ^= 1  # the last chunk no longer authenticates
    stored.write_bytes(bytes(data))
    with pytest.raises(StreamIntegrityError):
        build_package(
            tmp_path / "package.enc",
            wrapping_key=KEY,
            context="test",
            signer=PackageSigner(bytes(32)),
            request={"id": "req_1"},
            systems=systems,
        )
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
    assert not multiprocessing.active_children()


def test_a_stored_result_is_read_by_path_key_and_context_only(tmp_path: Path) -> None:
    rt: Any = SimpleNamespace(
        settings=SimpleNamespace(results_dir=tmp_path), sealer=SimpleNamespace(file_key=KEY)
    )
    name, temporary, writer = results.new_writer(rt, "cj_1", suffix="upload")
    writer.write(b'{"n": 1}\n')
    writer.close()
    results.publish(rt, temporary, name)
    reader = pickle.loads(pickle.dumps(results.reader(rt, "cj_1", name)))  # no runtime inside
    assert b"".join(reader()) == b'{"n": 1}\n'
    assert b"".join(results.read_chunks(rt, "cj_1", name)) == b'{"n": 1}\n'
    other = pickle.loads(pickle.dumps(results.reader(rt, "cj_2", name)))
    with pytest.raises(StreamIntegrityError):  # bound to its job: the context is checked
        b"".join(other())


def test_a_failure_while_writing_stops_the_workers_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "MIN_BYTES", 0)

    def full_disk(*args: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(assembly, "_write_system", full_disk)  # the first system, in the parent
    with pytest.raises(OSError, match="No space left"):
        build_package(
            tmp_path / "package.enc",
            wrapping_key=KEY,
            context="test",
            signer=PackageSigner(bytes(32)),
            request={"id": "req_1"},
            systems=_systems(tmp_path),
        )
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
    assert not multiprocessing.active_children()


def test_a_lone_surrogate_is_spooled_by_a_worker_as_by_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    systems = _systems(tmp_path)
    for n, system in enumerate(systems):
        stored = tmp_path / "results" / f"bad{n}.bin"
        lines = '{"category": "orders", "record": {"id": "\\ud800", "n": 1}}\n{"x": "\\udfff"}\n'
        system.sources.append(_stored(stored, lines.encode()))
    threaded = _members(tmp_path, "threaded.enc", systems)
    monkeypatch.setattr(workers, "MIN_BYTES", 0)
    assert workers.worth_it(systems)
    in_processes = _members(tmp_path, "processes.enc", systems)
    assert in_processes.keys() == threaded.keys()
    for name in threaded:
        if name != "manifest.jws":
            assert in_processes[name] == threaded[name], name
    data = json.loads(in_processes["data/system-0.json"].decode())
    assert data["orders"][-1] == {"id": "\ud800", "n": 1}
    assert data["records"] == [{"x": "\udfff"}]
    orders = in_processes["data/system-0/orders.csv"].decode()
    assert orders.endswith("\r\n\ufffd,1,,,\r\n")
    assert not multiprocessing.active_children()
