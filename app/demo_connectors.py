"""Sample connectors for ``dsr demo``: two systems on loopback that speak the protocol.

``shop`` answers at once with the records it holds; ``newsletter`` answers 202 and sends its
result later through the signed callback, as a system with a slow batch would. Both check
the signature of every call with the secret they were given at registration.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SYSTEMS: dict[str, dict[str, Any]] = {
    "shop": {
        "request_types": ["access", "erasure", "rectification", "portability"],
        "identity_types": ["email"],
        "categories": ["identity", "orders"],
        "processing": {
            "purposes": ["order handling", "delivery"],
            "legal_basis": "contract",
            "retention": "3 years after the last order",
            "recipients": ["carrier"],
            "source": "collected from the subject",
        },
    },
    "newsletter": {
        "request_types": ["access", "erasure", "objection"],
        "identity_types": ["email"],
        "categories": ["subscription"],
        "processing": {
            "purposes": ["direct marketing"],
            "legal_basis": "consent",
            "retention": "until unsubscription",
            "recipients": [],
            "source": "collected from the subject",
        },
    },
}


class DemoConnectors:
    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.log: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.app = Starlette(routes=[Route("/{system}", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        system = request.path_params["system"]
        raw = await request.body()
        try:
            call = Webhook(self.secrets[system]).verify(raw, dict(request.headers))
        except Exception:
            self.log.append(f"{system}: refused a call with a bad signature")
            return JSONResponse({"detail": "bad signature"}, status_code=401)
        self.log.append(
            f"{system}: signed {call['type']} call for job {call['job_id']} "
            f"(Idempotency-Key {request.headers['idempotency-key']})"
        )
        if system == "shop":
            return JSONResponse(_shop_result(call))
        task = asyncio.create_task(self._call_back(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return JSONResponse({"accepted": True}, status_code=202)

    async def _call_back(self, call: dict[str, Any]) -> None:
        await asyncio.sleep(0.3)
        body = json.dumps(
            {
                "status": "completed",
                "outcome": "found",
                "data": {"subscription": [{"list": "monthly news", "since": "2024-05-02"}]},
            }
        ).encode()
        msg_id = f"demo_{call['job_id']}"
        when = datetime.fromtimestamp(int(time.time()), tz=UTC)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(self.secrets["newsletter"]).sign(
                msg_id, when, body.decode()
            ),
            "content-type": "application/json",
        }
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            answer = await http.post(call["callback_url"], content=body, headers=headers)
        self.log.append(f"newsletter: called back, the service answered {answer.status_code}")


def _shop_result(call: dict[str, Any]) -> dict[str, Any]:
    email = call["subject"].get("email")
    if call["type"] in ("access", "portability"):
        return {
            "status": "completed",
            "outcome": "found",
            "data": {
                "identity": [{"email": email, "name": "Ana Ruiz"}],
                "orders": [{"id": "A-1001", "total": "42.50", "items": [{"sku": "TEA-1"}]}],
            },
        }
    if call["type"] == "erasure":
        return {
            "status": "completed",
            "outcome": "retained",
            "retained": [
                {
                    "category": "invoices",
                    "reason": "invoices are kept for tax audits",
                    "legal_basis": "French Commercial Code L.123-22",
                    "until": "2036-12-31",
                }
            ],
        }
    return {"status": "completed", "outcome": "rectified"}
