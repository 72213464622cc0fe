"""Proving who the subject is: one-time e-mail codes, trusted intake assertions, and identity
documents kept (encrypted) only until staff decide."""

from __future__ import annotations

import math
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Table
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.errors import InvalidInput, PayloadTooLarge, RateLimited, Unauthorized, UnsupportedMedia
from app.identity.errors import CodeBurnt, CodeExpired, WrongCode
from app.identity.models import IdentityDocument, VerificationCode
from app.kit.clock import utc
from app.kit.crypto import Sealer, normalise_email, same
from app.security.jwt import JwtVerifier

CODE_DIGITS = 6
CODE_TABLE: Table = VerificationCode.__table__  # type: ignore[attr-defined]

# --- e-mail codes -------------------------------------------------------------------------


def _new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


async def issue_code(
    session: AsyncSession,
    *,
    settings: Settings,
    sealer: Sealer,
    request_id: str,
    now: datetime,
) -> tuple[str, VerificationCode]:
    """Create the request's first code. Returns the code (to e-mail) and its stored row."""
    code, values = code_row(settings=settings, sealer=sealer, request_id=request_id, now=now)
    row = VerificationCode(**values)
    session.add(row)
    return code, row


def code_row(
    *, settings: Settings, sealer: Sealer, request_id: str, now: datetime
) -> tuple[str, dict[str, Any]]:
    """A first code and the column values of its ``verification_code`` row, for a caller
    that writes the row itself (intake, in one statement with its other rows)."""
    code = _new_code()
    return code, {
        "request_id": request_id,
        "digest": sealer.code_digest(context=request_id, code=code),
        "expires_at": now + timedelta(minutes=settings.verification_code_minutes),
        "attempts_left": settings.verification_max_attempts,
        "burnt": False,
        "sends_in_window": 1,
        "window_started_at": now,
    }


async def reissue_code(
    session: AsyncSession,
    *,
    settings: Settings,
    sealer: Sealer,
    request_id: str,
    now: datetime,
) -> str:
    """Replace the code (resend), at most ``verification_resend_limit`` times a window."""
    row = await session.get(VerificationCode, request_id, with_for_update=True)
    if row is None:
        code, _ = await issue_code(
            session, settings=settings, sealer=sealer, request_id=request_id, now=now
        )
        return code
    window = timedelta(minutes=settings.verification_resend_window_minutes)
    window_end = utc(row.window_started_at) + window
    if now >= window_end:
        row.window_started_at, row.sends_in_window = now, 0
    elif row.sends_in_window >= settings.verification_resend_limit + 1:
        raise RateLimited(
            "too many codes were sent for this request; try again later",
            retry_after=math.ceil((window_end - now).total_seconds()),
        )
    code = _new_code()
    row.digest = sealer.code_digest(context=request_id, code=code)
    row.expires_at = now + timedelta(minutes=settings.verification_code_minutes)
    row.attempts_left = settings.verification_max_attempts
    row.burnt = False
    row.sends_in_window += 1
    session.add(row)
    return code


async def check_code(
    session: AsyncSession, *, sealer: Sealer, request_id: str, code: str, now: datetime
) -> None:
    """Accept the right code once; count wrong tries; burn the code after the last one."""
    row = await session.get(VerificationCode, request_id, with_for_update=True)
    if row is None or row.burnt:
        raise CodeBurnt(
            "this code can no longer be used; request a new one with /verification/resend"
        )
    if now >= utc(row.expires_at):
        raise CodeExpired("this code has expired; request a new one with /verification/resend")
    if same(row.digest, sealer.code_digest(context=request_id, code=code)):
        await session.delete(row)
        return
    row.attempts_left -= 1
    if row.attempts_left <= 0:
        row.burnt = True
        session.add(row)
        raise CodeBurnt("too many wrong codes: this code is burnt; request a new one")
    session.add(row)
    raise WrongCode(
        "the code is not right",
        errors=[{"loc": ["body", "code"], "msg": "wrong code"}],
        extra={"attempts_left": row.attempts_left},
    )


async def drop_code(session: AsyncSession, *, request_id: str) -> None:
    row = await session.get(VerificationCode, request_id)
    if row is not None:
        await session.delete(row)


# --- trusted intake assertions ------------------------------------------------------------


async def verify_assertion(
    verifier: JwtVerifier | None, token: str, *, email: str, customer_id: str | None
) -> str:
    """Check an intake system's assertion about the subject; return who vouched for it."""
    if verifier is None:
        raise Unauthorized("no trusted intake system is configured for identity assertions")
    claims: dict[str, Any] = await verifier.verify(token)
    claimed_email = claims.get("email")
    if isinstance(claimed_email, str) and claimed_email:
        if normalise_email(claimed_email) != normalise_email(email):
            raise Unauthorized("the identity assertion is about someone else")
    elif customer_id is None or claims.get("sub") != customer_id:
        raise Unauthorized("the identity assertion does not name this subject")
    return str(claims.get("iss") or "intake")


# --- identity documents -------------------------------------------------------------------

_SIGNATURES = (
    (b"%PDF-", "application/pdf"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)


def sniff_document_type(head: bytes) -> str | None:
    """The document's type by its content (never by the name or the declared type)."""
    for magic, media_type in _SIGNATURES:
        if head.startswith(magic):
            return media_type
    return None


class Readable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


async def read_limited(upload: Readable, *, limit: int) -> bytes:
    chunks, total = [], 0
    while True:
        chunk = await upload.read(64 * 1024)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"the document is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _document_path(settings: Settings, file_name: str) -> Path:
    return settings.documents_dir / file_name


async def store_document(
    session: AsyncSession,
    *,
    settings: Settings,
    sealer: Sealer,
    request_id: str,
    upload: Readable,
    now: datetime,
) -> IdentityDocument:
    content = await read_limited(upload, limit=settings.document_max_bytes)
    if not content:
        raise InvalidInput.field(("body", "file"), "the file is empty")
    media_type = sniff_document_type(content[:16])
    if media_type is None:
        raise UnsupportedMedia(
            "the document must be a PDF, JPEG or PNG file",
            errors=[{"loc": ["body", "file"], "msg": "not a PDF, JPEG or PNG file"}],
        )
    existing = await session.get(IdentityDocument, request_id)
    if existing is not None:
        _remove_file(settings, existing.file_name)
        await session.delete(existing)
        await session.flush()
    file_name = f"{secrets.token_hex(16)}.bin"
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(sealer.file_key).encrypt(nonce, content, request_id.encode())
    settings.documents_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _document_path(settings, file_name)
    tmp = path.with_suffix(".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(sealed)
    os.replace(tmp, path)
    document = IdentityDocument(
        request_id=request_id,
        file_name=file_name,
        content_type=media_type,
        size_bytes=len(content),
        uploaded_at=now,
    )
    session.add(document)
    return document


def open_document(settings: Settings, sealer: Sealer, document: IdentityDocument) -> bytes:
    raw = _document_path(settings, document.file_name).read_bytes()
    return AESGCM(sealer.file_key).decrypt(raw[:12], raw[12:], document.request_id.encode())


def _remove_file(settings: Settings, file_name: str) -> None:
    _document_path(settings, file_name).unlink(missing_ok=True)


async def document_for(session: AsyncSession, request_id: str) -> IdentityDocument | None:
    return await session.get(IdentityDocument, request_id)


async def discard_document(
    session: AsyncSession, *, settings: Settings, request_id: str
) -> IdentityDocument | None:
    """Delete the document the moment staff decide; only the decision's facts remain."""
    document = await session.get(IdentityDocument, request_id)
    if document is None:
        return None
    _remove_file(settings, document.file_name)
    await session.delete(document)
    return document
