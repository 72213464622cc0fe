"""Issue 4's done-means scenario, end to end over real HTTP: a French access request answered
by three systems, one of which streams 200 MB, produces a package that verifies.

Everything runs on 127.0.0.1 in a throwaway directory: ``dsr serve`` (SQLite, worker inside)
in a process of its own, and three connector systems in this process:

- ``boutique`` answers the signed call at once (200 with its records);
- ``crm`` answers 202 and sends its result later through the signed callback;
- ``entrepot`` answers 202, streams ``--upload-mb`` of NDJSON records with
  ``PUT {callback_url}/data`` (generated on the fly and signed over the whole body, never
  held in memory on either side), then sends its signed result.

The subject files the request as a web form would (``language: fr``), reads the code from the
e-mail the service wrote, verifies; the script waits for ``completed``, downloads the package
with the status token, checks it with ``dsr export verify`` (the JWKS from
``GET /v1/export-keys``) and on its own (every member's SHA-256 against the manifest), and
checks that the French report names every purpose, legal basis, recipient and retention period
registered. It prints the figures (upload and assembly time, the server's peak RSS) and exits
non-zero on any failed check.

    .venv/bin/python bench/scenario_access.py            # about a minute
    .venv/bin/python bench/scenario_access.py --upload-mb 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import html
import json
import os
import random
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SYSTEMS: dict[str, dict[str, Any]] = {
    "boutique": {
        "categories": ["identity", "orders"],
        "processing": {
            "purposes": ["gestion des commandes", "livraison"],
            "legal_basis": "exécution du contrat",
            "retention": "3 ans après la dernière commande",
            "recipients": ["transporteur Colissimo"],
            "source": "collectées auprès de la personne",
        },
    },
    "crm": {
        "categories": ["contact"],
        "processing": {
            "purposes": ["relation client"],
            "legal_basis": "intérêt légitime",
            "retention": "5 ans après le dernier contact",
            "recipients": ["centre d'appels Lyon"],
            "source": "collectées auprès de la personne",
        },
    },
    "entrepot": {
        "categories": ["shipments"],
        "processing": {
            "purposes": ["préparation des colis", "suivi des expéditions"],
            "legal_basis": "obligation légale",
            "retention": "10 ans (pièces comptables)",
            "recipients": ["expert-comptable", "douanes"],
            "source": "données produites par nos entrepôts",
        },
    },
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _ndjson_lines(total_bytes: int) -> Iterator[bytes]:
    """Deterministic NDJSON shipment records (seeded, so two passes give the same bytes),
    about 300 bytes each, with random tokens so they compress like real data."""
    rng = random.Random(4711)
    sent, n, batch = 0, 0, []
    while sent < total_bytes:
        record = {
            "category": "shipments",
            "record": {
                "n": n,
                "parcel": rng.getrandbits(128).to_bytes(16, "big").hex(),
                "to": {"city": "Saint-Étienne", "relay": f"Relais {n % 97}"},
                "weight_kg": (n % 40) / 4,
                "events": [{"at": "2026-03-01T08:00:00Z", "what": "déposé"}],
            },
        }
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        batch.append(line)
        sent += len(line)
        n += 1
        if len(batch) == 512:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch)


def _sign_stream(secret: str, msg_id: str, timestamp: int, total_bytes: int) -> tuple[str, int]:
    """The Standard Webhooks signature over a body too large to hold (HMAC fed chunk by
    chunk), and the number of records in it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode(), hashlib.sha256)
    records = 0
    for chunk in _ndjson_lines(total_bytes):
        mac.update(chunk)
        records += chunk.count(b"\n")
    return "v1," + base64.b64encode(mac.digest()).decode(), records


class Systems:
    """The three connector systems, behind one loopback server."""

    def __init__(self, upload_bytes: int) -> None:
        self.upload_bytes = upload_bytes
        self.secrets: dict[str, str] = {}
        self.calls: dict[str, int] = {}
        self.upload_seconds = 0.0
        self.upload_records = 0
        self.upload_answer: int | None = None
        self.callback_answers: list[int] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.app = Starlette(routes=[Route("/{system}", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        system = request.path_params["system"]
        raw = await request.body()
        call = Webhook(self.secrets[system]).verify(raw, dict(request.headers))
        self.calls[system] = self.calls.get(system, 0) + 1
        if system == "boutique":
            return JSONResponse(
                {
                    "status": "completed",
                    "outcome": "found",
                    "data": {
                        "identity": [{"email": call["subject"]["email"], "name": "Ana Ruiz"}],
                        "orders": [{"id": "A-1001", "total": "42.50", "lines": [{"sku": "THÉ-1"}]}],
                    },
                }
            )
        task = asyncio.create_task(self._answer_later(system, call))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return JSONResponse({"accepted": True}, status_code=202)

    async def _answer_later(self, system: str, call: dict[str, Any]) -> None:
        secret = self.secrets[system]
        url = call["callback_url"]
        async with httpx.AsyncClient(timeout=600, trust_env=False) as http:
            if system == "entrepot":
                await self._upload(http, secret, url, call["job_id"])
                body: dict[str, Any] = {"status": "completed", "outcome": "found"}
            else:
                body = {
                    "status": "completed",
                    "outcome": "found",
                    "data": {"contact": [{"canal": "téléphone", "le": "2026-02-11"}]},
                }
            raw = json.dumps(body).encode()
            msg_id = f"cb_{call['job_id']}"
            now = int(time.time())
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(now),
                "webhook-signature": Webhook(secret).sign(msg_id, _utc(now), raw.decode()),
                "content-type": "application/json",
            }
            answer = await http.post(url, content=raw, headers=headers)
            self.callback_answers.append(answer.status_code)

    async def _upload(self, http: httpx.AsyncClient, secret: str, url: str, job_id: str) -> None:
        msg_id = f"up_{job_id}"
        now = int(time.time())
        signature, self.upload_records = await asyncio.to_thread(
            _sign_stream, secret, msg_id, now, self.upload_bytes
        )

        async def body() -> AsyncIterator[bytes]:
            for chunk in _ndjson_lines(self.upload_bytes):
                yield chunk

        started = time.perf_counter()
        answer = await http.put(
            f"{url}/data",
            content=body(),
            headers={
                "webhook-id": msg_id,
                "webhook-timestamp": str(now),
                "webhook-signature": signature,
                "content-type": "application/x-ndjson",
            },
        )
        self.upload_seconds = time.perf_counter() - started
        self.upload_answer = answer.status_code


def _utc(ts: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC)


def _code_from_mail(mail_dir: Path) -> str:
    for path in sorted(mail_dir.glob("*.eml"), key=lambda p: p.stat().st_mtime):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        match = re.search(r"\b(\d{6})\b", body.get_content() if body else "")
        if match:
            return match.group(1)
    raise RuntimeError("no verification e-mail was written")


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failed.append(what)


async def scenario(args: argparse.Namespace, work: Path) -> int:
    check = Checks()
    port, farm_port = _free_port(), _free_port()
    staff_secret = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "DSR_DATABASE_URL": f"sqlite:///{work / 'dsr.db'}",
        "DSR_DATA_DIR": str(work / "var"),
        "DSR_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DSR_STAFF_JWT_SECRET": staff_secret,
    }
    dsr = str(Path(sys.executable).with_name("dsr"))
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(
        [dsr, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    systems = Systems(args.upload_mb * 1024 * 1024)
    farm = uvicorn.Server(
        uvicorn.Config(
            systems.app,
            host="127.0.0.1",
            port=farm_port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
    )
    farm_task = asyncio.create_task(farm.serve())
    peak = {"rss": 0.0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            try:
                peak["rss"] = max(peak["rss"], _rss_mb(server.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=60, trust_env=False) as http:
            for _ in range(300):
                try:
                    if (await http.get("/v1/export-keys")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            from app.security.staff import mint_staff_token

            staff = {
                "Authorization": "Bearer "
                + mint_staff_token(
                    secret=staff_secret,
                    subject="scenario",
                    scopes=["requests:read", "requests:write", "connectors:write", "audit:read"],
                )
            }
            for name, fields in SYSTEMS.items():
                answer = await http.post(
                    "/v1/admin/connectors",
                    headers=staff,
                    json={
                        "name": name,
                        "url": f"http://127.0.0.1:{farm_port}/{name}",
                        "mode": "webhook",
                        "request_types": ["access"],
                        "identity_types": ["email"],
                        "timeout_s": 30,
                        **fields,
                    },
                )
                answer.raise_for_status()
                systems.secrets[name] = answer.json()["signing_secret"]
            print(f"registered {', '.join(SYSTEMS)}; filing a French access request")
            sampler.start()
            filed = await http.post(
                "/v1/requests",
                json={"type": "access", "subject": {"email": "ana@example.org"}, "language": "fr"},
            )
            filed.raise_for_status()
            request_id, token = filed.json()["id"], filed.json()["status_token"]
            subject = {"Authorization": f"Bearer {token}"}
            for _ in range(100):
                try:
                    code = _code_from_mail(work / "var" / "mail")
                    break
                except RuntimeError:
                    await asyncio.sleep(0.1)
            verified = await http.post(
                f"/v1/requests/{request_id}/verification", json={"code": code}, headers=subject
            )
            verified.raise_for_status()
            started = time.perf_counter()
            view: dict[str, Any] = {}
            deadline = started + args.timeout
            while time.perf_counter() < deadline:
                view = (await http.get(f"/v1/requests/{request_id}", headers=subject)).json()
                if view["status"] == "completed" and (view.get("export") or {}).get("ready"):
                    break
                await asyncio.sleep(0.5)
            total_s = time.perf_counter() - started
            check(view.get("status") == "completed", f"request completed ({total_s:.1f} s)")
            check(
                systems.calls == {"boutique": 1, "crm": 1, "entrepot": 1},
                f"each system called once: {systems.calls}",
            )
            check(
                systems.upload_answer in (200, 201, 202), f"upload answered {systems.upload_answer}"
            )
            check(
                all(s == 200 for s in systems.callback_answers),
                f"callbacks {systems.callback_answers}",
            )
            export = view.get("export") or {}
            package = work / "package.zip"
            digest = hashlib.sha256()
            download_started = time.perf_counter()
            async with http.stream(
                "GET", f"/v1/requests/{request_id}/export", headers=subject
            ) as answer:
                check(answer.status_code == 200, f"download answered {answer.status_code}")
                with package.open("wb") as out:
                    async for chunk in answer.aiter_bytes(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            download_s = time.perf_counter() - download_started
            check(digest.hexdigest() == export.get("sha256"), "export.sha256 is the SHA-256 served")
            keys = (await http.get("/v1/export-keys")).content
            (work / "jwks.json").write_bytes(keys)
    finally:
        sampling.set()
        farm.should_exit = True
        await farm_task
        server.terminate()
        server.wait(30)
        log.close()

    verdict = subprocess.run(
        [dsr, "export", "verify", str(package), "--key", str(work / "jwks.json")],
        env=env,
        capture_output=True,
        text=True,
    )
    check(verdict.returncode == 0, f"dsr export verify: {verdict.stdout.strip()[:200]}")
    with zipfile.ZipFile(package) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        files = {f["path"]: f for f in manifest["files"]}
        mismatched = []
        for name, entry in files.items():
            sha = hashlib.sha256()
            with zf.open(name) as member:
                for block in iter(lambda m=member: m.read(1 << 20), b""):
                    sha.update(block)
            if sha.hexdigest() != entry["sha256"]:
                mismatched.append(name)
        check(not mismatched, f"all {len(files)} files match their SHA-256 in the manifest")
        rows = 0
        with zf.open("data/entrepot/shipments.csv") as member:
            for block in iter(lambda m=member: m.read(1 << 20), b""):
                rows += block.count(b"\n")
        check(
            rows - 1 == systems.upload_records > 0,
            f"every streamed record is in the package: {rows - 1:,} CSV rows for "
            f"{systems.upload_records:,} records sent "
            f"(data/entrepot.json {files['data/entrepot.json']['bytes'] / 1e6:.0f} MB)",
        )
        report = html.unescape(zf.read("report.html").decode())
    check('lang="fr"' in report and "Finalités" in report, "the report is in French")
    for name, fields in SYSTEMS.items():
        processing = fields["processing"]
        wanted = [
            *processing["purposes"],
            processing["legal_basis"],
            processing["retention"],
            *processing["recipients"],
        ]
        missing = [w for w in wanted if w not in report]
        check(
            not missing,
            f"report names {name}'s purposes, legal basis, recipients, retention"
            + (f" (missing {missing})" if missing else ""),
        )
    size = package.stat().st_size
    print(
        f"\nupload {args.upload_mb} MiB in {systems.upload_seconds:.1f} s; approval -> package "
        f"ready {total_s:.1f} s; package {size / 1e6:.0f} MB downloaded in {download_s:.1f} s; "
        f"server peak RSS {peak['rss']:.0f} MB"
    )
    return 1 if check.failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upload-mb", type=int, default=200, help="MiB streamed by entrepot")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for completed")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dsr-scenario-"))
    try:
        code = asyncio.run(scenario(args, work))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
