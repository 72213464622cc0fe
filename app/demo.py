"""``dsr demo``: a walkthrough on loopback, in a throwaway data directory.

It starts the service on a free port of 127.0.0.1 with SQLite and two sample connectors
(``app.demo_connectors``), registers them, files an access request as a web form would, reads
the verification code from the e-mail the service wrote, verifies, watches the signed calls
and the callback, shows what the subject and staff see, then checks the audit chain. Nothing
is kept.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from app.config import Settings, new_key
from app.demo_connectors import SYSTEMS, DemoConnectors
from app.main import create_app
from app.migrate import upgrade
from app.security.staff import SCOPES, mint_staff_token


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _show(title: str, value: Any) -> None:
    print(f"\n== {title}")
    print(json.dumps(value, indent=2, ensure_ascii=False) if not isinstance(value, str) else value)


def _code_from_mail(mail_dir: Path) -> str:
    for path in sorted(mail_dir.glob("*.eml"), key=lambda p: p.stat().st_mtime, reverse=True):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        match = re.search(r"\b(\d{6})\b", body.get_content() if body else "")
        if match:
            return match.group(1)
    raise RuntimeError("no verification e-mail was written")


async def _register(
    http: httpx.AsyncClient, staff: dict[str, str], connectors: DemoConnectors, base: str
) -> None:
    for name, fields in SYSTEMS.items():
        answer = await http.post(
            "/v1/admin/connectors",
            json={"name": name, "url": f"{base}/{name}", **fields},
            headers=staff,
        )
        answer.raise_for_status()
        created = answer.json()
        connectors.secrets[name] = created.pop("signing_secret")
    listed = (await http.get("/v1/admin/connectors", headers=staff)).json()["items"]
    _show(
        "0. two systems register as connectors (POST /v1/admin/connectors)",
        [f"{c['name']:<11} {c['url']}  types: {', '.join(c['request_types'])}" for c in listed],
    )


async def _walkthrough(
    base: str, settings: Settings, connectors: DemoConnectors, farm: str
) -> None:
    token = mint_staff_token(
        secret=settings.staff_jwt_secret, subject="demo", scopes=sorted(SCOPES)
    )
    staff = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as http:
        await _register(http, staff, connectors, farm)
        filed = (
            await http.post(
                "/v1/requests",
                json={
                    "type": "access",
                    "language": "en",
                    "subject": {"email": "ana@example.org", "name": "Ana Ruiz"},
                },
            )
        ).json()
        _show("1. a web form files an access request (POST /v1/requests)", filed)
        subject = {"Authorization": f"Bearer {filed['status_token']}"}
        for _ in range(50):
            if any(settings.mail_dir.glob("*.eml")):
                break
            await asyncio.sleep(0.1)
        code = _code_from_mail(settings.mail_dir)
        _show("2. the worker e-mailed a code", f"(read from {settings.mail_dir}) {code}")
        verified = await http.post(
            f"/v1/requests/{filed['id']}/verification", json={"code": code}, headers=subject
        )
        _show("3. the subject enters it (POST .../verification)", verified.json())
        status: dict[str, Any] = {}
        for _ in range(50):
            status = (await http.get(f"/v1/requests/{filed['id']}", headers=subject)).json()
            if status["status"] not in ("in_progress", "pending_verification"):
                break
            await asyncio.sleep(0.1)
        _show("4. the service calls every system that handles the type", connectors.log)
        _show("5. the subject's status page (GET /v1/requests/{id})", status)
        detail = (await http.get(f"/v1/admin/requests/{filed['id']}", headers=staff)).json()
        _show(
            "6. staff see each system's job",
            [
                f"{j['connector_name']:<11} {j['status']:<10} attempts {j['attempts']}  "
                f"outcome {j['outcome']}"
                for j in detail["jobs"]
            ],
        )
        _show("7. and why the due date is what it is", detail["deadline_explanation"])
        _show(
            "8. and the audit trail",
            [
                f"{e['seq'] or '…':>3} {e['at']} {e['actor']:<14} {e['action']}"
                for e in detail["events"]
            ],
        )
        audit = await http.get("/v1/admin/audit/verify", headers=staff)
        _show("9. the audit chain verifies", audit.json())


def run_demo() -> None:
    with tempfile.TemporaryDirectory(prefix="dsr-demo-") as tmp:
        data = Path(tmp)
        settings = Settings(
            database_url=f"sqlite:///{data / 'demo.db'}",
            data_dir=data,
            encryption_key=new_key(),
            staff_jwt_secret=new_key(),
            default_language="en",
            worker_poll_seconds=0.2,
        )
        upgrade(settings.database_url)
        port = _free_port()
        settings.public_url = f"http://127.0.0.1:{port}"
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        connectors = DemoConnectors()
        farm_port = _free_port()
        farm = uvicorn.Server(
            uvicorn.Config(connectors.app, host="127.0.0.1", port=farm_port, log_level="warning")
        )

        async def main() -> None:
            serving = asyncio.create_task(server.serve())
            farming = asyncio.create_task(farm.serve())
            while not (server.started and farm.started):
                await asyncio.sleep(0.05)
            try:
                await _walkthrough(
                    settings.public_url, settings, connectors, f"http://127.0.0.1:{farm_port}"
                )
            finally:
                server.should_exit = farm.should_exit = True
                await asyncio.gather(serving, farming)

        asyncio.run(main())
        print("\nDone: everything above lived in a temporary directory, now deleted.")
