"""Answer-package benchmark: assembling a package from many systems' stored results, and
downloading it through the service, with the memory each takes.

    .venv/bin/python bench/export.py                 # 20 systems, 1 GiB of NDJSON records
    .venv/bin/python bench/export.py --total-mb 200  # a quicker look

1. **generate** (a child process): 20 systems' results as the service stores them:
   NDJSON uploads (``{"category": ..., "record": {...}}`` per line, nested values and
   non-ASCII text), encrypted with ``app.kit.streams`` under the service's file key.
2. **assemble** (a child process of its own, so its peak RSS is the assembly's alone):
   ``app.exports.assembly.build_package`` over those files into an encrypted package: the
   exact code the ``exports.assemble`` job runs. Reports seconds, MB/s of input records,
   the CPU seconds (user + system, all its threads and its worker processes) and MB per
   CPU-second (the figure to compare when other work shares the machine), the package
   size, the process's peak RSS (``ru_maxrss``) and the peak of its RSS and its worker
   processes' together (sampled from ``/proc`` every 50 ms).
3. **download**: ``dsr serve`` on 127.0.0.1 (SQLite, worker on). An access request is
   entered by staff (no connector: it completes at once with an empty package), then its
   package file and row are replaced by the big one (same package id, so the same
   encryption context), and ``GET /v1/requests/{id}/export`` is streamed with the status
   token. Reports MB/s and the server's RSS, sampled every 50 ms from ``/proc``.

Everything lives in a temporary directory, deleted at the end (``--keep`` keeps it). Prints
a Markdown summary and writes ``bench/out/export-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"assemble_mb_s": 50.0, "assemble_rss_mb": 200.0, "download_mb_s": 100.0}
CATEGORIES = ("orders", "tickets", "visits")


def _record(system: int, n: int) -> dict[str, Any]:
    # Random tokens keep the data about as compressible as real records (a package of
    # repeated text would shrink 20-fold and make the download figure meaningless).
    return {
        "id": f"S{system}-{n}",
        "ref": secrets.token_hex(16),
        "device": secrets.token_urlsafe(24),
        "created": "2025-03-01T10:00:00Z",
        "customer": {"name": "Ána Ruíz", "city": "Saint-Étienne", "tags": ["fidèle", "vip"]},
        "total": n % 997 + 0.5,
        "lines": [{"sku": f"SKU-{n % 50}", "qty": n % 3 + 1}],
        "note": "Livraison au point relais, merci d'appeler avant." * (1 + n % 2),
    }


def generate(directory: Path, *, systems: int, total_bytes: int, key: bytes) -> list[dict]:
    from app.kit.streams import EncryptedWriter

    directory.mkdir(parents=True, exist_ok=True)
    per_system = total_bytes // systems
    files = []
    for s in range(systems):
        path = directory / f"system-{s}.bin"
        writer = EncryptedWriter(path, wrapping_key=key, context=path.name)
        written, n, batch = 0, 0, []
        while written < per_system:
            line = json.dumps(
                {"category": CATEGORIES[n % 3], "record": _record(s, n)}, ensure_ascii=False
            ).encode()
            batch.append(line)
            written += len(line) + 1
            n += 1
            if len(batch) == 2000:
                writer.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            writer.write(b"\n".join(batch) + b"\n")
        files.append({"path": str(path), "bytes": writer.close(), "records": n})
    return files


def assemble(
    files: list[dict], out: Path, *, key: bytes, context: str, master: bytes
) -> dict[str, Any]:
    from app.exports.assembly import SourceFile, SystemInput, build_package
    from app.exports.signing import PackageSigner
    from app.kit.streams import iter_decrypted

    systems = [
        SystemInput(
            name=f"system {i}",
            outcome="found",
            processing={"purposes": ["bench"], "legal_basis": "contract"},
            sources=[
                SourceFile(
                    format="ndjson",
                    size=f["bytes"],
                    chunks=partial(
                        iter_decrypted,
                        Path(f["path"]),
                        wrapping_key=key,
                        context=Path(f["path"]).name,
                    ),
                )
            ],
        )
        for i, f in enumerate(files)
    ]
    usage, usage_workers = _cpu(), _cpu(resource.RUSAGE_CHILDREN)
    sampler = _TreeRss()
    sampler.start()
    started = time.perf_counter()
    built = build_package(
        out,
        wrapping_key=key,
        context=context,
        signer=PackageSigner(master),
        request={"id": "bench", "type": "access"},
        systems=systems,
        report=lambda described: "<html>bench</html>",
    )
    seconds = time.perf_counter() - started
    cpu_workers = _cpu(resource.RUSAGE_CHILDREN) - usage_workers
    cpu = _cpu() - usage + cpu_workers
    tree_peak = sampler.finish()
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "cpu_seconds_workers": round(cpu_workers, 2),
        "input_bytes": sum(f["bytes"] for f in files),
        "package_bytes": built.size,
        "sha256": built.sha256,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "tree_peak_rss_mb": round(tree_peak, 1),
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds of this process (``RUSAGE_CHILDREN``: of its children that have ended;
    the assembly's worker processes are shut down before ``build_package`` returns)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # the command name is in parentheses and may hold spaces: ppid follows it
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class _TreeRss:
    """Peak RSS of this process and all its descendants together (the worker processes),
    sampled from ``/proc`` every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.05):
            total = 0.0
            for pid in [me, *_descendants(me)]:
                with contextlib.suppress(OSError):
                    total += _rss_mb(pid)
            self.peak = max(self.peak, total)

    def finish(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def _child(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.child).read_text())
    key, master = bytes.fromhex(spec["key"]), bytes.fromhex(spec["master"])
    if spec["phase"] == "generate":
        result: Any = generate(
            Path(spec["dir"]), systems=spec["systems"], total_bytes=spec["bytes"], key=key
        )
    else:
        result = assemble(
            spec["files"], Path(spec["out"]), key=key, context=spec["context"], master=master
        )
    print(json.dumps(result))


def _run_child(spec: dict[str, Any], work: Path) -> Any:
    path = work / f"spec-{spec['phase']}.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(path)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode:
        raise SystemExit(f"{spec['phase']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _download(base: str, env: dict[str, str], server_pid: int, big: dict, work: Path) -> dict:
    import httpx

    from app.security.staff import mint_staff_token

    token = mint_staff_token(
        secret=env["DSR_STAFF_JWT_SECRET"], subject="bench", scopes=["requests:write"]
    )
    async with httpx.AsyncClient(base_url=base, timeout=60, trust_env=False) as http:
        entered = await http.post(
            "/v1/admin/requests",
            json={
                "type": "access",
                "subject": {"email": "bench@example.org"},
                "channel": "email",
                "received_at": datetime.now(UTC).isoformat(),
                "identity_verified": True,
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        entered.raise_for_status()
        request_id = entered.json()["id"]
        db = sqlite3.connect(env["DSR_DATABASE_URL"].removeprefix("sqlite:///"))
        row = None
        for _ in range(200):
            row = db.execute(
                "SELECT id, file_name FROM export_package WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row:
                break
            await asyncio.sleep(0.05)
        assert row, "the empty package was never built"
        package_id, file_name = row
        # The big package, built for this package id (its encryption context).
        built = big["build"](f"export:{package_id}")
        os.replace(built["path"], Path(env["DSR_DATA_DIR"]) / "exports" / file_name)
        db.execute(
            "UPDATE export_package SET size_bytes = ?, sha256 = ? WHERE id = ?",
            (built["package_bytes"], built["sha256"], package_id),
        )
        db.commit()
        db.close()
        # A status token for the subject view of this request: staff-entered requests have
        # none, so the bench reads the one the intake path would give from a filed request.
        status_token = big["token_for"](request_id)
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(_rss_mb(server_pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        rss_before = _rss_mb(server_pid)
        sampler.start()
        digest, size = hashlib.sha256(), 0
        started = time.perf_counter()
        async with http.stream(
            "GET",
            f"/v1/requests/{request_id}/export",
            headers={"Authorization": f"Bearer {status_token}"},
        ) as answer:
            answer.raise_for_status()
            async for chunk in answer.aiter_raw(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
    assert size == built["package_bytes"], (size, built["package_bytes"])
    assert digest.hexdigest() == built["sha256"], "the bytes served are not the package"
    return {
        "seconds": round(seconds, 2),
        "bytes": size,
        "mb_s": round(size / 1e6 / seconds, 1),
        "server_rss_mb_before": round(rss_before, 1),
        "server_rss_mb_peak": round(max(samples or [rss_before]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", type=int, default=20)
    parser.add_argument("--total-mb", type=int, default=1024, help="MiB of records in all")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if not (1 <= args.systems <= 200 and 1 <= args.total_mb <= 8192):
        parser.error("bounds: systems 1..200, total-mb 1..8192")

    from app.config import decode_key, new_key
    from app.kit.crypto import Sealer

    work = Path(tempfile.mkdtemp(prefix="dsr-bench-export-"))
    encryption_key = new_key()
    master = decode_key(encryption_key)
    file_key = Sealer(master).file_key
    common = {"key": file_key.hex(), "master": master.hex()}
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "systems": args.systems,
        "total_mb": args.total_mb,
        "targets": TARGETS,
    }
    server = None
    try:
        print(f"generating {args.total_mb} MiB of records for {args.systems} systems ...")
        files = _run_child(
            {
                **common,
                "phase": "generate",
                "dir": str(work / "results"),
                "systems": args.systems,
                "bytes": args.total_mb * 1024 * 1024,
            },
            work,
        )
        figures["records"] = sum(f["records"] for f in files)

        def build(context: str) -> dict[str, Any]:
            out = work / "package.zip.enc"
            result = _run_child(
                {
                    **common,
                    "phase": "assemble",
                    "files": files,
                    "out": str(out),
                    "context": context,
                },
                work,
            )
            return {**result, "path": str(out)}

        port = _free_port()
        data_dir = work / "var"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DSR_")},
            "DSR_DATABASE_URL": f"sqlite:///{work / 'dsr.db'}",
            "DSR_DATA_DIR": str(data_dir),
            "DSR_ENCRYPTION_KEY": encryption_key,
            "DSR_STAFF_JWT_SECRET": new_key() + new_key(),
            "DSR_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "DSR_WORKER_POLL_SECONDS": "0.1",
            "PYTHONPATH": str(ROOT),
        }
        log = (work / "server.log").open("w")
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            cwd=work,
            stdout=log,
            stderr=log,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.05)

        def token_for(request_id: str) -> str:
            # Give the request a status token the bench knows (its digest is what is stored).
            token = new_key()
            db = sqlite3.connect(work / "dsr.db")
            db.execute(
                "UPDATE dsr_request SET status_token_digest = ? WHERE id = ?",
                (hashlib.sha256(token.encode()).hexdigest(), request_id),
            )
            db.commit()
            db.close()
            return token

        big: dict[str, Any] = {}

        def build_and_keep(context: str) -> dict[str, Any]:
            print("assembling the package (child process) ...")
            big.update(build(context))
            return big

        print("downloading through dsr serve ...")
        figures["download"] = asyncio.run(
            _download(
                base, env, server.pid, {"build": build_and_keep, "token_for": token_for}, work
            )
        )
        figures["assemble"] = {k: v for k, v in big.items() if k not in ("path", "sha256")} | {
            "mb_s": round(big["input_bytes"] / 1e6 / big["seconds"], 1),
            "mb_per_cpu_s": round(big["input_bytes"] / 1e6 / big["cpu_seconds"], 1),
        }
        figures["load_during_assembly"] = big.get("load")
    finally:
        if server is not None:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=15)
            if server.poll() is None:
                server.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    a, d = figures["assemble"], figures["download"]
    print()
    print("| phase | seconds | MB/s | CPU seconds (MB per CPU-second) | memory | target |")
    print("|---|---|---|---|---|---|")
    print(
        f"| assemble {a['input_bytes'] / 1e6:.0f} MB of records ({figures['records']:,} records,"
        f" {args.systems} systems) -> {a['package_bytes'] / 1e6:.0f} MB package | {a['seconds']}"
        f" | {a['mb_s']} | {a['cpu_seconds']} ({a['mb_per_cpu_s']}; workers"
        f" {a['cpu_seconds_workers']}) | peak RSS"
        f" {a['peak_rss_mb']} MB, with its worker processes {a['tree_peak_rss_mb']} MB"
        " | >= 50 MB/s, RSS < 200 MB |"
    )
    print(
        f"| download (dsr serve, one client) | {d['seconds']} | {d['mb_s']} | | server RSS"
        f" {d['server_rss_mb_before']} -> peak {d['server_rss_mb_peak']} MB | >= 100 MB/s, flat |"
    )
    print(
        f"\nload average during the assembly: {figures['load_during_assembly']} on"
        f" {figures['cores']} cores (wall-clock MB/s is only meaningful on a quiet machine;"
        " MB per CPU-second is the assembly process's own figure)"
    )
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"export-{stamp}.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
