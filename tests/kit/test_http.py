"""The shared HTTP client against real sockets on loopback: what it sends, what it reads, and
which httpx error each network failure becomes (staff read it in a job's ``last_error``)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from app.kit.http import shared_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Peer:
    """A raw HTTP/1.1 server: each test says exactly what goes on the wire."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []
        self.connections = 0

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((lines[0].encode(), headers, body))
        return body

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def peer(make: Callable[[Peer], Handler]) -> AsyncIterator[tuple[Peer, str]]:
    holder = Peer(lambda r, w: asyncio.sleep(0))
    holder.handler = make(holder)
    server = await asyncio.start_server(holder.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield holder, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def answer(status: int, body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


def keep_answering(peer: Peer, reply: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await peer.read_request(reader)
            writer.write(reply)
            await writer.drain()

    return handle


async def test_it_sends_the_request_as_given_and_reuses_the_connection() -> None:
    reply = answer(200, b'{"status":"completed"}', "content-type: application/json")
    async with peer(lambda p: keep_answering(p, reply)) as (server, url), shared_client() as http:
        headers = {"webhook-id": "msg_1", "idempotency-key": "job_1"}
        first = await http.post(f"{url}/hook", content=b'{"a":"\xc3\xa9"}', headers=headers)
        second = await http.post(f"{url}/hook", content=b"{}", headers=headers)
    assert (first.status_code, first.json()) == (200, {"status": "completed"})
    assert second.status_code == 200
    line, sent, body = server.requests[0]
    assert line == b"POST /hook HTTP/1.1"
    assert body == b'{"a":"\xc3\xa9"}'
    assert (sent["webhook-id"], sent["idempotency-key"]) == ("msg_1", "job_1")
    assert "cookie" not in sent
    assert server.connections == 1  # kept alive


async def test_a_redirect_is_answered_not_followed() -> None:
    reply = answer(302, b"", "location: http://169.254.169.254/")
    async with peer(lambda p: keep_answering(p, reply)) as (server, url), shared_client() as http:
        response = await http.post(url, content=b"{}")
    assert response.status_code == 302
    assert len(server.requests) == 1


async def test_a_compressed_answer_is_decoded() -> None:
    packed = gzip.compress(b'{"ok": true}')
    reply = answer(200, packed, "content-encoding: gzip")
    async with peer(lambda p: keep_answering(p, reply)) as (_, url), shared_client() as http:
        response = await http.get(url)
    assert response.json() == {"ok": True}


async def test_a_body_can_be_left_unread_after_a_limit() -> None:
    big = answer(200, b"x" * 1_000_000)
    async with peer(lambda p: keep_answering(p, big)) as (server, url), shared_client() as http:
        async with http.stream("POST", url, content=b"{}") as response:
            async for chunk in response.aiter_bytes():
                assert chunk
                break
        again = await http.post(url, content=b"{}")
    assert len(again.content) == 1_000_000
    assert server.connections == 2  # the half-read connection was not put back in the pool


async def test_a_refused_connection_is_a_connect_error_not_a_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    async with shared_client() as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.post(f"http://127.0.0.1:{port}/", content=b"{}")
    assert not isinstance(caught.value, httpx.TimeoutException)


async def test_a_peer_that_hangs_up_is_a_protocol_error() -> None:
    def hang_up(p: Peer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await p.read_request(reader)

        return handle

    async with peer(hang_up) as (_, url), shared_client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url, content=b"{}")


async def test_a_garbled_answer_is_a_protocol_error() -> None:
    async with (
        peer(lambda p: keep_answering(p, b"SMTP ready\r\n\r\n")) as (_, url),
        shared_client() as http,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url, content=b"{}")


async def test_a_slow_peer_is_a_read_timeout() -> None:
    def silent(p: Peer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await p.read_request(reader)
            await asyncio.sleep(5)

        return handle

    async with peer(silent) as (_, url), shared_client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url, content=b"{}", timeout=0.2)


async def test_a_body_cut_short_is_a_read_error() -> None:
    def cut(p: Peer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await p.read_request(reader)
            writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial')
            await writer.drain()

        return handle

    async with peer(cut) as (_, url), shared_client() as http:
        with pytest.raises(httpx.ReadError):
            await http.post(url, content=b"{}")


async def test_a_cookie_set_by_a_peer_is_never_sent_back() -> None:
    """Calls are stateless: a connector's ``Set-Cookie`` must not link one person's request
    to the next one's (the shared client would otherwise keep it for that host)."""
    reply = answer(200, b"{}", "set-cookie: visitor=abc123; Path=/")
    async with peer(lambda p: keep_answering(p, reply)) as (server, url), shared_client() as http:
        for _ in range(2):
            response = await http.post(f"{url}/hook", content=b"{}")
            assert response.status_code == 200
    assert len(server.requests) == 2
    assert all("cookie" not in headers for _, headers, _ in server.requests)
    assert not http.cookies
