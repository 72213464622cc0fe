"""Standard Webhooks signatures, both ways.

Outgoing calls and incoming callbacks are signed and checked with ``standardwebhooks``, the
reference library: ``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed with
the decoded ``whsec_`` secret. Streamed uploads cannot be held in memory to hand the library
one body, so ``StreamCheck`` computes the same HMAC chunk by chunk and compares at the end.

Timestamps are wall-clock seconds (never the service's test clock): a receiver judges them
against its own clock, and more than five minutes off either way is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60
MAX_ID = 200  # the receipts' column


class BadSignature(Exception):
    """The headers are missing, malformed, too old or new, or no signature matches."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign_headers(
    signing_secrets: Sequence[str], *, msg_id: str, body: bytes, timestamp: float | None = None
) -> dict[str, str]:
    """The three headers for ``body``, signed with every given secret (the current one and,
    during a rotation's grace period, the previous one: receivers accept any match)."""
    when = datetime.fromtimestamp(int(timestamp or time.time()), tz=UTC)
    text = body.decode()
    signatures = [
        Webhook(s).sign(msg_id=msg_id, timestamp=when, data=text) for s in signing_secrets
    ]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


def verify(signing_secrets: Sequence[str], *, body: bytes, headers: Mapping[str, str]) -> None:
    """Accept ``body`` if its headers carry a fresh signature by one of the secrets."""
    check_headers(headers)
    wanted = {
        k: headers.get(k, "") for k in ("webhook-id", "webhook-timestamp", "webhook-signature")
    }
    for secret in signing_secrets:
        try:
            Webhook(secret).verify(body, wanted, json_parse=False)
            return
        except WebhookVerificationError as exc:
            reason = str(exc)
            if "timestamp" in reason.lower() or "headers" in reason.lower():
                raise BadSignature(reason) from None
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise BadSignature("malformed signature headers") from None
    raise BadSignature("no matching signature")


def check_headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
    """The three headers, when present and well formed with a fresh timestamp: checked
    before a body is read, so a stale replay or a call without a signature costs no body.
    A webhook-id is a short message id; a longer one than ``MAX_ID`` is refused, not cut
    (two cut ids could collide and a new message pass for a repeat)."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signature_header = headers.get("webhook-signature", "")
    if not (msg_id and stamp and signature_header):
        raise BadSignature("missing signature headers")
    if len(msg_id) > MAX_ID:
        raise BadSignature(f"webhook-id longer than {MAX_ID} characters")
    # Integer seconds, as the library signs them: a float() here would take "nan" (which
    # no comparison refuses) or "1.5" (signed as written, checked by the library floored).
    if not (stamp.isascii() and stamp.isdigit()):
        raise BadSignature("malformed webhook-timestamp")
    if abs(time.time() - int(stamp)) > TOLERANCE_SECONDS:
        raise BadSignature("timestamp more than five minutes off")
    return msg_id, stamp, signature_header


class StreamCheck:
    """The same check for a body that arrives in chunks: ``update`` each chunk, then
    ``verify``. The headers' shape and timestamp are checked before the first byte."""

    def __init__(self, signing_secrets: Sequence[str], headers: Mapping[str, str]) -> None:
        msg_id, stamp, signature_header = check_headers(headers)
        self._offered: list[bytes] = []
        for part in signature_header.split(" "):
            version, _, value = part.partition(",")
            if version != "v1":
                continue
            try:
                self._offered.append(base64.b64decode(value, validate=True))
            except (ValueError, binascii.Error):
                raise BadSignature("malformed webhook-signature") from None
        prefix = f"{msg_id}.{stamp}.".encode()
        self._macs = [hmac.new(secret_bytes(s), prefix, hashlib.sha256) for s in signing_secrets]

    def update(self, chunk: bytes) -> None:
        for mac in self._macs:
            mac.update(chunk)

    def verify(self) -> None:
        for mac in self._macs:
            expected = mac.digest()
            if any(hmac.compare_digest(expected, offered) for offered in self._offered):
                return
        raise BadSignature("no matching signature")
