"""Where connectors' data lands: encrypted files under ``DSR_DATA_DIR/results``.

Records sent for access and portability are personal data. They are written in AES-GCM
chunks (``app.kit.streams``) with a fresh key per file, bound to the job and file name, so
a 5 GiB upload passes through bounded memory and is never on disk in the clear. The export
assembly reads them back chunk by chunk; the expiry sweep deletes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from app.kit.streams import EncryptedWriter, iter_decrypted
from app.kit.text import utf8_json
from app.runtime import Runtime


def _dir(rt: Runtime) -> Path:
    path = rt.settings.results_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


def _context(job_id: str, name: str) -> str:
    return f"result:{job_id}:{name}"


def new_writer(rt: Runtime, job_id: str, *, suffix: str) -> tuple[str, Path, EncryptedWriter]:
    """A writer for a new file of ``job_id`` (temporary name until ``publish``)."""
    name = f"{job_id}.{suffix}.{secrets.token_hex(4)}.bin"
    temporary = _dir(rt) / f".{name}.part"
    writer = EncryptedWriter(
        temporary, wrapping_key=rt.sealer.file_key, context=_context(job_id, name)
    )
    return name, temporary, writer


def publish(rt: Runtime, temporary: Path, name: str) -> None:
    os.replace(temporary, _dir(rt) / name)


def store_data(rt: Runtime, job_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Write a result's inline ``data``; returns its entry for the job's ``data_files``."""
    name, temporary, writer = new_writer(rt, job_id, suffix="result")
    try:
        # A lone surrogate in a record (see client.parse_result) is kept as its escape.
        writer.write(utf8_json(json.dumps(data, ensure_ascii=False)))
        size = writer.close()
    except BaseException:
        writer.abort()
        raise
    publish(rt, temporary, name)
    return {"file": name, "format": "json", "bytes": size, "source": "result"}


def read_chunks(rt: Runtime, job_id: str, name: str) -> Any:
    """The decrypted bytes of a stored file, chunk by chunk."""
    return reader(rt, job_id, name)()


def reader(rt: Runtime, job_id: str, name: str) -> partial[Iterator[bytes]]:
    """``read_chunks`` for later, by path, key and context only (not the runtime): it can
    be pickled, so the export assembly reads the file in a worker process."""
    return partial(
        iter_decrypted,
        _dir(rt) / name,
        wrapping_key=rt.sealer.file_key,
        context=_context(job_id, name),
    )


def delete(rt: Runtime, names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (_dir(rt) / name).unlink()
