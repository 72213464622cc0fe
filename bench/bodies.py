"""Request bodies of varied types, each with a distinct e-mail (``n`` and a run tag make it
unique), shared by the seeder and the load generator."""

from __future__ import annotations

import json
from typing import Any

TYPES = ("access", "erasure", "rectification", "portability", "objection", "restriction")
JURISDICTIONS = (None, "gdpr", None, "gdpr-fr", None, "uk-gdpr", None, "ccpa")
LANGUAGES = ("fr", "en", None, "en-GB")
NAMES = ("Ana Ruiz", "Jean Dupont", "Li Wei", "Zoë Müller", "Oluwaseun Adeyemi")


def body_for(n: int, tag: str) -> dict[str, Any]:
    kind = TYPES[n % len(TYPES)]
    subject: dict[str, Any] = {"email": f"bench-{tag}-{n}@example.org"}
    if n % 2 == 0:
        subject["name"] = NAMES[n % len(NAMES)]
    if n % 3 == 0:
        subject["phone"] = f"+33 6 {n % 100:02d} {n // 100 % 100:02d} 00 00"
    if n % 5 == 0:
        subject["customer_id"] = f"C-{n}"
    body: dict[str, Any] = {"type": kind, "subject": subject}
    if n % 4 == 0:
        body["details"] = "Please send me everything you hold about me, order history included."
    if kind == "rectification":
        body["rectifications"] = [{"field": "postal_address", "value": f"{n} rue X, Paris"}]
    elif kind == "objection":
        body["objection"] = {"purposes": ["direct_marketing"] if n % 2 else []}
    jurisdiction = JURISDICTIONS[n % len(JURISDICTIONS)]
    if jurisdiction:
        body["jurisdiction"] = jurisdiction
    language = LANGUAGES[n % len(LANGUAGES)]
    if language:
        body["language"] = language
    return body


def body_bytes(n: int, tag: str) -> bytes:
    return json.dumps(body_for(n, tag), ensure_ascii=False, separators=(",", ":")).encode()
