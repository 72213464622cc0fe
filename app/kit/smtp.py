"""SMTP: the ``DSR_SMTP_URL`` form, and connections kept open between deliveries.

A connection per mail costs a TCP handshake, EHLO, usually STARTTLS (a TLS handshake) and
AUTH before the one message it carries; at intake rates that is most of the time spent on
each mail, for us and for the relay. ``SmtpConnections`` keeps a few connections per server
open and lends them to deliveries one at a time: a delivery takes the connection used last
(or opens one, up to ``size`` per server, else waits for one), sends, and gives it back.
A connection whose transaction failed is closed, never reused. One idle for
``idle_seconds`` is not reused (servers drop quiet clients: Postfix after 300 s): it is
closed when the next delivery comes by, or at shutdown. Errors are raised as aiosmtplib
raised them: the caller turns them into reasons safe to log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class SmtpTarget:
    hostname: str
    port: int
    use_tls: bool
    start_tls: bool | None  # None: upgrade if the server offers STARTTLS (aiosmtplib's default)
    username: str | None
    password: str | None = field(repr=False)  # never in a log line or a traceback


def parse_smtp_url(url: str) -> SmtpTarget:
    """``smtp://[user:password@]host[:port][?starttls=true]`` or ``smtps://...``.

    Raises ``ValueError`` with a message that does not repeat the URL (it may hold a password),
    so the configuration can be checked at start and the error shown as is.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("DSR_SMTP_URL is not a valid URL") from None
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError("DSR_SMTP_URL must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("DSR_SMTP_URL has no host")
    use_tls = parts.scheme == "smtps"
    start_tls: bool | None = None
    flags = parse_qs(parts.query).get("starttls")
    if flags:
        flag = flags[-1].lower()
        if flag not in _TRUE | _FALSE:
            raise ValueError("DSR_SMTP_URL: starttls must be true or false")
        start_tls = flag in _TRUE
        if use_tls and start_tls:
            raise ValueError("DSR_SMTP_URL: smtps:// is already TLS; starttls=true is for smtp://")
    if use_tls:
        start_tls = False
    return SmtpTarget(
        hostname=parts.hostname,
        port=port or (465 if use_tls else 25),
        use_tls=use_tls,
        start_tls=start_tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


class _Server:
    """The idle connections to one server (most recently used last) and the cap on how
    many are open."""

    def __init__(self, size: int) -> None:
        self.idle: list[tuple[aiosmtplib.SMTP, float]] = []  # (connection, idle since)
        self.slots = asyncio.Semaphore(size)


class SmtpConnections:
    """Connections kept open per SMTP server, for the deliveries of one process.

    ``probe_after_seconds``: a connection idle for longer is checked with a NOOP before it
    carries a message (servers drop quiet clients; a dead one is replaced before anything
    of the message was sent). A failure once a transaction has begun is the delivery's, never
    sent again here: the server may have taken the message already, and the outbox decides.
    """

    def __init__(
        self, *, size: int = 4, idle_seconds: float = 30, probe_after_seconds: float = 5
    ) -> None:
        self.size, self.idle_seconds = size, idle_seconds
        self.probe_after_seconds = probe_after_seconds
        self._servers: dict[SmtpTarget, _Server] = {}
        self._closed = False

    async def send(
        self,
        target: SmtpTarget,
        message: Message,
        *,
        sender: str,
        recipients: list[str],
        timeout: float,
    ) -> None:
        server = self._servers.setdefault(target, _Server(self.size))
        async with server.slots:
            smtp = await self._take(server, target, timeout)
            try:
                await smtp.send_message(message, sender=sender, recipients=recipients)
            except BaseException:
                _close(smtp)  # in an unknown state: never reused
                raise
            self._give_back(server, smtp)

    async def _take(self, server: _Server, target: SmtpTarget, timeout: float) -> aiosmtplib.SMTP:
        while server.idle:
            smtp, since = server.idle.pop()
            idle_for = time.monotonic() - since
            if not smtp.is_connected or idle_for >= self.idle_seconds:
                _close(smtp)
                continue
            if idle_for >= self.probe_after_seconds:
                try:
                    await smtp.noop()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    _close(smtp)
                    continue
            return smtp
        return await self._open(target, timeout)

    def _give_back(self, server: _Server, smtp: aiosmtplib.SMTP) -> None:
        if self._closed:  # shut down while this one was sending
            _close(smtp)
            return
        now = time.monotonic()
        # The oldest come first: drop those idle too long, then keep this one.
        while server.idle and now - server.idle[0][1] >= self.idle_seconds:
            _close(server.idle.pop(0)[0])
        server.idle.append((smtp, now))

    async def _open(self, target: SmtpTarget, timeout: float) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=target.hostname,
            port=target.port,
            username=target.username,
            password=target.password,
            use_tls=target.use_tls,
            start_tls=target.start_tls,
            timeout=timeout,
        )
        try:
            await smtp.connect()  # EHLO, STARTTLS and AUTH as the target asks
        except BaseException:
            _close(smtp)
            raise
        return smtp

    async def aclose(self) -> None:
        """Say goodbye (QUIT) on every idle connection; the process is shutting down (a
        connection still sending is closed when it comes back)."""
        self._closed = True
        servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            idle, server.idle = server.idle, []
            for smtp, _ in idle:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(smtp.quit(), timeout=2)
                _close(smtp)


def _close(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        smtp.close()
