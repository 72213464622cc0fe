"""Checking a package as its recipient would: the manifest's signature, then every file's
size and SHA-256 against the manifest, and no file the manifest does not list."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.exports.signing import BadSignature, verify_detached

SIGNATURE_FILES = frozenset({"manifest.json", "manifest.jws"})


@dataclass
class Verdict:
    ok: bool
    problems: list[str] = field(default_factory=list)
    files: int = 0
    key_id: str | None = None


def verify_package(path: Path, *, key: str | dict[str, Any]) -> Verdict:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        return Verdict(False, [f"not a readable ZIP file: {exc}"])
    with archive:
        names = set(archive.namelist())
        missing = SIGNATURE_FILES - names
        if missing:
            return Verdict(False, [f"missing {', '.join(sorted(missing))}"])
        body = archive.read("manifest.json")
        try:
            header = verify_detached(archive.read("manifest.jws").decode(), body, key=key)
        except (BadSignature, UnicodeDecodeError) as exc:
            return Verdict(False, [f"manifest.jws: {exc}"])
        manifest = json.loads(body)
        problems: list[str] = []
        listed = {entry["path"]: entry for entry in manifest.get("files", [])}
        for name in sorted(names - SIGNATURE_FILES - set(listed)):
            if not name.endswith("/"):
                problems.append(f"{name}: not listed in the manifest")
        for name, entry in listed.items():
            if name not in names:
                problems.append(f"{name}: listed in the manifest but missing")
                continue
            digest, size = hashlib.sha256(), 0
            try:
                with archive.open(name) as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
                        size += len(chunk)
            except (zipfile.BadZipFile, OSError) as exc:
                problems.append(f"{name}: unreadable ({exc})")
                continue
            if size != entry.get("bytes") or digest.hexdigest() != entry.get("sha256"):
                problems.append(f"{name}: does not match its checksum in the manifest")
        return Verdict(not problems, problems, files=len(listed), key_id=header.get("kid"))
