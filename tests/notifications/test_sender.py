"""Delivery to an .eml file and to a real SMTP server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from app.kit.smtp import SmtpConnections
from app.notifications import sender
from app.notifications.sender import (
    DeliveryError,
    OutgoingMail,
    deliver,
    parse_smtp_url,
)

RECIPIENT = "ana.ruiz@example.org"
MAIL_FROM = "privacy@dsr.example"
BODY = "Bonjour,\n\nVotre demande a été reçue le 2 mars 2026 : merci de votre patience.\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def outgoing(**overrides: str) -> OutgoingMail:
    fields = {
        "message_id": "out_01abc",
        "to": RECIPIENT,
        "subject": "Accusé de réception de votre demande req_01abc",
        "text": BODY,
        "language": "fr",
    }
    fields.update(overrides)
    return OutgoingMail(**fields)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


class Collector:
    """An aiosmtpd handler that keeps what it receives, or refuses recipients on demand; it
    counts the sessions (one EHLO each) and the QUITs, and can hang up after each message."""

    def __init__(self, *, refuse_recipients: str | None = None) -> None:
        self.envelopes: list[Envelope] = []
        self.refuse_recipients = refuse_recipients
        self.sessions = 0
        self.quits = 0
        self.hang_up_after_data = False
        # "MAIL" or "NOOP": hang up when a session that carried a message sends that command
        self.hang_up_on: str | None = None
        self._carried: set[int] = set()  # sessions that carried a message already
        self.slow_data: threading.Event | None = None  # set when a DATA starts, then 2 s

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, name: str, responses: list[str]
    ) -> list[str]:
        session.host_name = name  # the hook's duty (aiosmtpd)
        self.sessions += 1
        return responses

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.refuse_recipients:
            return self.refuse_recipients
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def _hangs_up(self, command: str, server: SMTP, session: Session) -> bool:
        if self.hang_up_on == command and id(session) in self._carried and server.transport:
            server.transport.close()  # the client learns it only now
            return True
        return False

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope, _: str) -> str:
        return "421 closing" if self._hangs_up("NOOP", server, session) else "250 OK"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self._hangs_up("MAIL", server, session):
            return "421 closing"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.slow_data is not None:
            self.slow_data.set()
            await asyncio.sleep(2)
        self.envelopes.append(envelope)
        self._carried.add(id(session))
        if self.hang_up_after_data and server.transport is not None:
            # As a server does with a client that stays idle too long: after the answer.
            asyncio.get_running_loop().call_later(0.05, server.transport.close)
        return "250 Message accepted for delivery"


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def smtp_server(collector: Collector) -> Iterator[str]:
    port = free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()


# --- file sink -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_eml_file_written_and_parseable(tmp_path: Path) -> None:
    mail_dir = tmp_path / "var" / "mail"
    await deliver(outgoing(), smtp_url="", mail_dir=mail_dir, mail_from=MAIL_FROM)

    path = mail_dir / "out_01abc.eml"
    assert [p.name for p in mail_dir.iterdir()] == ["out_01abc.eml"]  # no temp file left
    assert stat.S_IMODE(mail_dir.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0

    message = parse(path.read_bytes())
    assert message["From"] == MAIL_FROM
    assert message["To"] == RECIPIENT
    assert message["Subject"] == "Accusé de réception de votre demande req_01abc"
    assert message["Message-ID"] == "<out_01abc@dsr>"
    assert message["Content-Language"] == "fr"
    assert message["Date"]
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message.get_content() == BODY
    assert path.read_bytes().isascii()  # encoded headers and quoted-printable body


@pytest.mark.anyio
async def test_non_ascii_headers_are_encoded_and_read_back(tmp_path: Path) -> None:
    subject = "Votre demande req_01abc : accusé de réception, délais et voies de recours " * 2
    sender = "Équipe « vie privée » <privacy@dsr.example>"
    await deliver(outgoing(subject=subject), smtp_url="", mail_dir=tmp_path, mail_from=sender)
    raw = (tmp_path / "out_01abc.eml").read_bytes()
    assert raw.isascii()
    assert all(len(line) <= 78 for line in raw.split(b"\n"))  # folded (RFC 5322)
    message = parse(raw)
    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == "Équipe « vie privée »"
    assert message["From"].addresses[0].addr_spec == "privacy@dsr.example"
    assert message.get_content() == BODY


@pytest.mark.anyio
async def test_an_address_that_is_not_ascii_is_refused_for_good(tmp_path: Path) -> None:
    with pytest.raises(DeliveryError) as info:
        await deliver(
            outgoing(to="anaïs@example.org"), smtp_url="", mail_dir=tmp_path, mail_from=MAIL_FROM
        )
    assert info.value.permanent
    assert "anaïs" not in str(info.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.anyio
async def test_eml_redelivery_overwrites_the_same_file(tmp_path: Path) -> None:
    await deliver(outgoing(), smtp_url="", mail_dir=tmp_path, mail_from=MAIL_FROM)
    await deliver(
        outgoing(text="Deuxième envoi.\n"), smtp_url="", mail_dir=tmp_path, mail_from=MAIL_FROM
    )
    assert [p.name for p in tmp_path.iterdir()] == ["out_01abc.eml"]
    assert parse((tmp_path / "out_01abc.eml").read_bytes()).get_content() == "Deuxième envoi.\n"


@pytest.mark.anyio
async def test_unwritable_mail_dir_raises_delivery_error(tmp_path: Path) -> None:
    blocker = tmp_path / "mail"
    blocker.write_text("not a directory")
    with pytest.raises(DeliveryError) as info:
        await deliver(outgoing(), smtp_url="", mail_dir=blocker, mail_from=MAIL_FROM)
    assert RECIPIENT not in str(info.value)


@pytest.mark.anyio
async def test_files_written_together_fail_one_by_one(tmp_path: Path) -> None:
    """Mails delivered in the same moment are written by one batch; a file that cannot be
    written fails its own delivery only."""
    (tmp_path / "out_02blocked.eml").mkdir()  # a directory where this mail's file would go
    names = ["out_01a", "out_02blocked", "out_03c"]
    sender._FILE_BATCHES.clear()  # this test's event loop gets a coalescer of its own
    results = await asyncio.gather(
        *(
            deliver(outgoing(message_id=name), smtp_url="", mail_dir=tmp_path, mail_from=MAIL_FROM)
            for name in names
        ),
        return_exceptions=True,
    )
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], DeliveryError)
    assert RECIPIENT not in str(results[1])
    for name in ("out_01a", "out_03c"):
        assert parse((tmp_path / f"{name}.eml").read_bytes())["Message-ID"] == f"<{name}@dsr>"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.eml" for name in names]
    _, batches = sender._FILE_BATCHES["coalescer:mail-files"]
    assert batches.batches == 1  # one thread hop for the three


async def test_a_batch_of_files_is_made_durable_with_one_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = sender._fsync_directory
    monkeypatch.setattr(sender, "_fsync_directory", lambda d: (synced.append(d), real(d)))
    sender._FILE_BATCHES.clear()
    names = ["out_01a", "out_02b", "out_03c"]
    await asyncio.gather(
        *(
            deliver(outgoing(message_id=name), smtp_url="", mail_dir=tmp_path, mail_from=MAIL_FROM)
            for name in names
        )
    )
    assert synced == [tmp_path]  # the renames are on disk before the mails count as sent


async def test_a_directory_that_cannot_be_synced_fails_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(directory: Path) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(sender, "_fsync_directory", broken)
    sender._FILE_BATCHES.clear()
    results = await asyncio.gather(
        *(
            deliver(outgoing(message_id=name), smtp_url="", mail_dir=tmp_path, mail_from=MAIL_FROM)
            for name in ("out_01a", "out_02b")
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, DeliveryError) and not r.permanent for r in results)
    assert all("EIO" in str(r) for r in results)  # the outbox will try them again


# --- SMTP ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_smtp_delivery(smtp_server: str, collector: Collector, tmp_path: Path) -> None:
    await deliver(outgoing(), smtp_url=smtp_server, mail_dir=tmp_path, mail_from=MAIL_FROM)

    assert len(collector.envelopes) == 1
    envelope = collector.envelopes[0]
    assert envelope.mail_from == MAIL_FROM
    assert envelope.rcpt_tos == [RECIPIENT]
    assert isinstance(envelope.content, bytes)
    message = parse(envelope.content)
    assert message["Subject"] == "Accusé de réception de votre demande req_01abc"
    assert message["Message-ID"] == "<out_01abc@dsr>"
    assert message["To"] == RECIPIENT
    assert message["Content-Language"] == "fr"
    assert message.get_content().replace("\r\n", "\n") == BODY  # CRLF on the wire
    assert list(tmp_path.iterdir()) == []  # nothing written to disk when SMTP is configured


@pytest.mark.anyio
async def test_smtp_redelivery_keeps_message_id(
    smtp_server: str, collector: Collector, tmp_path: Path
) -> None:
    for _ in range(2):
        await deliver(outgoing(), smtp_url=smtp_server, mail_dir=tmp_path, mail_from=MAIL_FROM)
    contents = [envelope.content for envelope in collector.envelopes]
    assert all(isinstance(content, bytes) for content in contents)
    ids = {parse(content)["Message-ID"] for content in contents if isinstance(content, bytes)}
    assert len(contents) == 2
    assert ids == {"<out_01abc@dsr>"}


@contextlib.asynccontextmanager
async def kept(**options: Any) -> AsyncIterator[SmtpConnections]:
    """A set of kept-open SMTP connections, closed (QUIT) when the block ends."""
    connections = SmtpConnections(**options)
    try:
        yield connections
    finally:
        await connections.aclose()


@pytest.fixture
async def connections() -> AsyncIterator[SmtpConnections]:
    async with kept(size=3) as connections:
        yield connections


async def deliver_kept(
    connections: SmtpConnections, url: str, tmp_path: Path, n: int, **overrides: str
) -> None:
    await deliver(
        outgoing(message_id=f"out_{n:03d}", **overrides),
        smtp_url=url,
        mail_dir=tmp_path,
        mail_from=MAIL_FROM,
        connections=connections,
    )


@pytest.mark.anyio
async def test_deliveries_share_kept_connections(
    smtp_server: str, collector: Collector, connections: SmtpConnections, tmp_path: Path
) -> None:
    for n in range(4):
        await deliver_kept(connections, smtp_server, tmp_path, n)
    assert collector.sessions == 1  # one EHLO: the four mails went over one connection
    # Concurrent deliveries: never more than ``size`` (3) connections open at once.
    await asyncio.gather(*(deliver_kept(connections, smtp_server, tmp_path, n) for n in range(10)))
    assert 2 <= collector.sessions <= 3
    assert len(collector.envelopes) == 14
    contents = [e.content for e in collector.envelopes if isinstance(e.content, bytes)]
    assert len({parse(content)["Message-ID"] for content in contents}) == 10  # ids 000-009
    await connections.aclose()  # shutting down: QUIT on every connection left open
    assert collector.quits == collector.sessions


@pytest.mark.anyio
async def test_a_connection_the_server_closed_is_replaced(
    smtp_server: str, collector: Collector, connections: SmtpConnections, tmp_path: Path
) -> None:
    collector.hang_up_after_data = True
    for n in range(3):
        await deliver_kept(connections, smtp_server, tmp_path, n)
        await asyncio.sleep(0.2)  # the server has hung up by now
    assert len(collector.envelopes) == 3
    assert collector.sessions == 3


@pytest.mark.anyio
async def test_a_long_idle_connection_is_checked_before_it_carries_a_message(
    smtp_server: str, collector: Collector, tmp_path: Path
) -> None:
    collector.hang_up_on = "NOOP"  # as a server that dropped the idle client meanwhile
    async with kept(probe_after_seconds=0) as connections:
        for n in range(3):
            await deliver_kept(connections, smtp_server, tmp_path, n)
    assert len(collector.envelopes) == 3
    assert collector.sessions == 3  # each probe found it gone: a new connection each time


@pytest.mark.anyio
async def test_a_message_whose_connection_broke_mid_transaction_is_not_sent_again(
    smtp_server: str, collector: Collector, connections: SmtpConnections, tmp_path: Path
) -> None:
    collector.hang_up_on = "MAIL"
    await deliver_kept(connections, smtp_server, tmp_path, 0)
    with pytest.raises(DeliveryError) as info:
        await deliver_kept(connections, smtp_server, tmp_path, 1)
    # Not sent again behind the outbox's back (the server might have taken it): the outbox
    # retries it, as any failed delivery.
    assert not info.value.permanent
    assert len(collector.envelopes) == 1
    await deliver_kept(connections, smtp_server, tmp_path, 1)
    assert len(collector.envelopes) == 2
    assert collector.sessions == 2


@pytest.mark.anyio
async def test_a_delivery_cancelled_mid_send_frees_its_slot_and_drops_its_connection(
    smtp_server: str, collector: Collector, tmp_path: Path
) -> None:
    collector.slow_data = threading.Event()
    async with kept(size=1) as connections:
        sending = asyncio.create_task(deliver_kept(connections, smtp_server, tmp_path, 0))
        while not collector.slow_data.is_set():
            await asyncio.sleep(0.01)
        sending.cancel()  # shutdown, mid-DATA
        with pytest.raises(asyncio.CancelledError):
            await sending
        collector.slow_data = None
        await asyncio.wait_for(deliver_kept(connections, smtp_server, tmp_path, 1), timeout=10)
    assert collector.sessions == 2  # the cancelled one was not lent again


@pytest.mark.anyio
async def test_an_idle_connection_is_not_reused_after_idle_seconds(
    smtp_server: str, collector: Collector, tmp_path: Path
) -> None:
    async with kept(idle_seconds=0) as connections:
        for n in range(2):
            await deliver_kept(connections, smtp_server, tmp_path, n)
    assert collector.sessions == 2
    # The stale one is dropped without a QUIT (no round trip on a delivery's path); the other
    # says goodbye at shutdown.
    assert collector.quits == 1


@pytest.mark.anyio
async def test_a_refused_message_does_not_spoil_the_next(
    smtp_server: str, collector: Collector, connections: SmtpConnections, tmp_path: Path
) -> None:
    collector.refuse_recipients = f"550 5.1.1 <{RECIPIENT}>: no such user"
    with pytest.raises(DeliveryError) as info:
        await deliver_kept(connections, smtp_server, tmp_path, 0)
    assert info.value.permanent
    collector.refuse_recipients = None
    await deliver_kept(connections, smtp_server, tmp_path, 1)
    assert len(collector.envelopes) == 1


@pytest.mark.anyio
async def test_unreachable_server_raises_without_recipient(tmp_path: Path) -> None:
    port = free_port()  # closed again: nothing listens there
    with pytest.raises(DeliveryError) as info:
        await deliver(
            outgoing(),
            smtp_url=f"smtp://127.0.0.1:{port}",
            mail_dir=tmp_path,
            mail_from=MAIL_FROM,
            timeout=5,
        )
    assert not info.value.permanent
    text = str(info.value)
    assert RECIPIENT not in text
    assert "ana.ruiz" not in text
    assert "Bonjour" not in text
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.anyio
async def test_refused_recipient_is_permanent(tmp_path: Path) -> None:
    collector = Collector(refuse_recipients=f"550 5.1.1 <{RECIPIENT}>: no such user")
    port = free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with pytest.raises(DeliveryError) as info:
            await deliver(
                outgoing(),
                smtp_url=f"smtp://127.0.0.1:{port}",
                mail_dir=tmp_path,
                mail_from=MAIL_FROM,
            )
    finally:
        controller.stop()
    assert info.value.permanent
    assert info.value.code == 550
    assert "550" in str(info.value)
    assert RECIPIENT not in str(info.value)


@pytest.mark.anyio
async def test_bad_smtp_url_raises_without_password(tmp_path: Path) -> None:
    with pytest.raises(DeliveryError) as info:
        await deliver(
            outgoing(),
            smtp_url="http://user:s3cret@mail.example",
            mail_dir=tmp_path,
            mail_from=MAIL_FROM,
        )
    assert "s3cret" not in str(info.value)


@pytest.mark.anyio
async def test_header_injection_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeliveryError) as info:
        await deliver(
            outgoing(to=f"{RECIPIENT}\r\nBcc: other@example.org"),
            smtp_url="",
            mail_dir=tmp_path,
            mail_from=MAIL_FROM,
        )
    assert info.value.permanent
    assert RECIPIENT not in str(info.value)


@pytest.mark.parametrize("message_id", ["", "../etc/passwd", "a/b", ".hidden", "a b"])
def test_unsafe_message_id_is_refused(message_id: str) -> None:
    with pytest.raises(ValueError, match="message_id"):
        outgoing(message_id=message_id)


# --- SMTP URL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "use_tls", "start_tls", "username", "password"),
    [
        ("smtp://mail.example", "mail.example", 25, False, None, None, None),
        ("smtp://mail.example:2525", "mail.example", 2525, False, None, None, None),
        ("smtps://mail.example", "mail.example", 465, True, False, None, None),
        ("smtp://mail.example:587?starttls=true", "mail.example", 587, False, True, None, None),
        ("smtp://mail.example?starttls=false", "mail.example", 25, False, False, None, None),
        (
            "smtps://dsr%40example.org:p%40ss%3Aw%2Frd@mail.example:1465",
            "mail.example",
            1465,
            True,
            False,
            "dsr@example.org",
            "p@ss:w/rd",
        ),
        ("smtp://user:@mail.example", "mail.example", 25, False, None, "user", ""),
    ],
)
def test_parse_smtp_url(
    url: str,
    host: str,
    port: int,
    use_tls: bool,
    start_tls: bool | None,
    username: str | None,
    password: str | None,
) -> None:
    target = parse_smtp_url(url)
    assert (target.hostname, target.port, target.use_tls, target.start_tls) == (
        host,
        port,
        use_tls,
        start_tls,
    )
    assert (target.username, target.password) == (username, password)


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example",
        "smtp://",
        "smtp://mail.example:notaport",
        "smtps://mail.example?starttls=true",
        "smtp://mail.example?starttls=maybe",
    ],
)
def test_parse_smtp_url_rejects(url: str) -> None:
    with pytest.raises(ValueError, match="DSR_SMTP_URL"):
        parse_smtp_url(url)
