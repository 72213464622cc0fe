"""Delivery of one rendered e-mail: to an SMTP server, or to an ``.eml`` file in development.

The outbox calls ``deliver`` once per row and retries on ``DeliveryError``, so delivery is
idempotent where we control it: the ``Message-ID`` is derived from the outbox row
(``<{message_id}@dsr>``) so a receiver or a human can recognise a re-delivery, and the file sink
overwrites the same file. Errors carry a short reason only (exception class, SMTP code, errno
name), never the recipient, the body or the SMTP URL: they end up in logs and in the outbox
table, where personal data and credentials must not.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import re
import secrets
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib

from app.jobs.batching import coalescer
from app.kit.smtp import SmtpConnections, parse_smtp_url

# Message ids become a file name and the left part of a Message-ID: keep them to safe atoms.
_MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True)
class OutgoingMail:
    message_id: str
    to: str
    subject: str
    text: str
    language: str

    def __post_init__(self) -> None:
        if not _MESSAGE_ID.fullmatch(self.message_id):
            raise ValueError("message_id must be letters, digits, '.', '_' or '-'")


class DeliveryError(Exception):
    """The mail was not delivered; the outbox decides whether to try again.

    ``permanent`` is true when the server refused this very message (a 5xx for the recipient or
    the data): trying again would get the same answer. Everything else (connection, timeout,
    authentication, configuration, 4xx) may succeed later. The message is a short reason safe to
    log: it never contains the recipient, the body or credentials.
    """

    def __init__(self, reason: str, *, permanent: bool = False, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.code = code


_UTF8_QP = Charset("utf-8")
_UTF8_QP.header_encoding = QP
_UTF8_QP.body_encoding = QP


def _header(name: str, value: str) -> str | Header:
    """A header value as written: refused with a line break (header injection), RFC 2047
    encoded (and folded) when it is not ASCII."""
    if "\r" in value or "\n" in value:
        raise ValueError("a header value holds a line break")
    return value if value.isascii() else Header(value, _UTF8_QP, header_name=name)


def _address(value: str) -> str:
    """``addr`` or ``Name <addr>``; a display name that is not ASCII is encoded. An address
    that is not ASCII would need SMTPUTF8: refused rather than sent garbled."""
    if "\r" in value or "\n" in value:
        raise ValueError("an address holds a line break")
    name, addr = parseaddr(value)
    if not addr or not addr.isascii():
        raise ValueError("an address must be ASCII")
    return formataddr((name, addr), charset="utf-8")


# The sender is the same on every message: parsed once.
_sender_address = functools.lru_cache(maxsize=8)(_address)


def build_message(mail: OutgoingMail, *, mail_from: str) -> Message:
    """The MIME message: UTF-8 plain text, quoted-printable so it survives 7-bit relays.

    Built with the stdlib's classic ``MIMEText`` (``compat32``), whose headers are plain
    strings: ``EmailMessage``'s default policy parses every header into an object, which was
    a third of a busy worker's CPU; the checks it made (no line breaks, encoded non-ASCII) are
    made here."""
    message = MIMEText(mail.text, "plain", _UTF8_QP)  # type: ignore[arg-type]  # takes a Charset
    message["From"] = _sender_address(mail_from)
    message["To"] = _address(mail.to)
    message["Subject"] = _header("Subject", mail.subject)  # type: ignore[assignment]  # a Header is fine
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{mail.message_id}@dsr>"
    # RFC 3834: tells vacation responders and mailing lists not to answer a robot.
    message["Auto-Submitted"] = "auto-generated"
    message["Content-Language"] = _header("Content-Language", mail.language)  # type: ignore[assignment]
    return message


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _write_file(path: Path, data: bytes) -> None:
    """Temp file in the same directory, then rename: a reader never sees half a mail, and a
    re-delivery replaces the file in one step. Created readable by us only (0600), as
    ``tempfile.mkstemp`` would, but with the bare system calls (open, write, fsync, close,
    rename): a file object's extra ones (fstat, ioctl, lseek, its buffer) each passed the GIL
    back and forth with the event loop (during intake, half of the worker's CPU was system
    time)."""
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, _NEW_FILE, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_files(files: list[tuple[Path, bytes]]) -> list[OSError | None]:
    """Write (and fsync) each file, then fsync their directory once, so that the renames
    are on disk too before the mails count as delivered. One failure is that file's (or,
    for the directory, its files'), not the batch's."""
    made: set[Path] = set()
    errors: list[OSError | None] = []
    for path, data in files:
        try:
            if path.parent not in made:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                made.add(path.parent)
            _write_file(path, data)
        except OSError as exc:
            errors.append(exc)
        else:
            errors.append(None)
    for directory in made:
        try:
            _fsync_directory(directory)
        except OSError as exc:
            errors = [
                exc if error is None and path.parent == directory else error
                for (path, _), error in zip(files, errors, strict=True)
            ]
    return errors


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The file sink's batches, one coalescer per event loop (``app.jobs.batching``).
_FILE_BATCHES: dict[str, Any] = {}


async def _write_mail_file(path: Path, data: bytes) -> None:
    """Write one ``.eml`` file. The files that the worker's concurrent deliveries write in the
    same moment go to the thread pool together: a thread hop per mail, and the GIL passed back
    and forth with it, cost more CPU than writing and fsyncing the file (0.5 of 1.1 ms a mail
    when a backlog of e-mails was delivered). A batch fsyncs its files one after another:
    0.35 ms each on this project's machines, so the sink writes thousands a second; on a disk
    with slow fsyncs it writes fewer than it would in parallel (it is the development sink:
    production mail goes through SMTP)."""

    async def many(files: list[tuple[Path, bytes]]) -> list[OSError | None]:
        return await asyncio.to_thread(_write_files, files)

    async def one(file: tuple[Path, bytes]) -> OSError | None:
        return (await many([file]))[0]

    error = await coalescer(_FILE_BATCHES, "mail-files", many, one).submit((path, data))
    if error is not None:
        raise error


def _reason(exc: BaseException) -> tuple[str, int | None, bool]:
    """A loggable reason, the SMTP code if any, and whether the refusal is permanent."""
    name = type(exc).__name__
    code: int | None = None
    permanent = False
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        code = exc.recipients[0].code
        permanent = 500 <= code < 600
    elif isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError):
        code = exc.code
        permanent = 500 <= code < 600
    elif isinstance(exc, aiosmtplib.SMTPResponseException):
        code = exc.code
    if code is not None:
        return f"{name} {code}", code, permanent
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return f"{name} {errno.errorcode[exc.errno]}", None, False
    return name, None, False


async def deliver(
    mail: OutgoingMail,
    *,
    smtp_url: str,
    mail_dir: Path,
    mail_from: str,
    timeout: float = 15,
    connections: SmtpConnections | None = None,
) -> None:
    """Send ``mail`` by SMTP, or write ``{mail_dir}/{message_id}.eml`` when no server is set.
    With ``connections`` (the process's, ``Runtime.smtp``), over a connection kept open
    between deliveries; without, over a connection of its own.

    Raises ``DeliveryError`` on any failure; safe to call again for the same mail.
    """
    try:
        message = build_message(mail, mail_from=mail_from)
    except (ValueError, TypeError) as exc:  # e.g. a line break in an address
        raise DeliveryError(f"invalid message: {type(exc).__name__}", permanent=True) from None

    if not smtp_url.strip():
        path = mail_dir / f"{mail.message_id}.eml"
        try:
            await _write_mail_file(path, bytes(message))
        except OSError as exc:
            reason, _, _ = _reason(exc)
            raise DeliveryError(f"mail file not written: {reason}") from None
        return

    try:
        target = parse_smtp_url(smtp_url)
    except ValueError as exc:
        raise DeliveryError(str(exc)) from None
    kept = connections or SmtpConnections(size=1)
    try:
        await kept.send(target, message, sender=mail_from, recipients=[mail.to], timeout=timeout)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        # ``from None``: the original exception's text may quote the recipient.
        reason, code, permanent = _reason(exc)
        raise DeliveryError(
            f"SMTP delivery failed: {reason}", permanent=permanent, code=code
        ) from None
    finally:
        if connections is None:
            await kept.aclose()
