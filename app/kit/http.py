"""The process's HTTP client: httpx's API over aiohttp's connection pool and C parser.

Connector calls are the hot path of the fan-out. httpx's own transport (httpcore, anyio, h11,
all pure Python) costs about 1.5 ms of CPU per loopback call here, five times what aiohttp
needs, and was a third of a busy worker's CPU. So the shared ``httpx.AsyncClient`` keeps its
API (timeouts, ``stream()``, event hooks, headers, no redirects followed) and hands the bytes
to aiohttp. aiohttp's errors become httpx's, chosen so that what a staff member reads in a
job's ``last_error`` is what happened: a refused connection is a ``ConnectError``, not a
timeout; a peer that hung up is a ``RemoteProtocolError``.

Request bodies are sent from memory (the service's outgoing bodies are small JSON); response
bodies are streamed, so a caller can stop reading at its limit.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from http.cookiejar import Cookie, CookieJar
from typing import Any

import aiohttp
import httpx

# Most specific first: the first class an error is an instance of decides.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.PoolTimeout),  # aiohttp's ``connect`` budget: waiting for the pool
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # not a valid HTTP answer
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientError, httpx.NetworkError),
)


def httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    """The httpx error that says what ``exc`` (from aiohttp) means; None if it is not one."""
    for source, target in _ERRORS:
        if isinstance(exc, source):
            error = target(f"{type(exc).__name__}: {exc}", request=request)
            return error
    return None


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except Exception as exc:
            error = httpx_error(exc, self._request)
            if error is None:
                raise
            raise error from exc

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end; closed otherwise.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An ``httpx`` transport on one ``aiohttp.ClientSession``, created on first use (it
    belongs to the running event loop)."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        self._limits = limits
        self._ssl = httpx.create_ssl_context(verify=verify, trust_env=False)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=self._limits.keepalive_expiry or 5.0,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes by Content-Encoding
                cookie_jar=aiohttp.DummyCookieJar(),  # nothing carried from one peer to the next
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        body = await request.aread()
        try:
            response = await self._client().request(
                request.method,
                str(request.url),
                headers=list(request.headers.multi_items()),
                data=body or None,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        except Exception as exc:
            error = httpx_error(exc, request)
            if error is None:
                raise
            raise error from exc
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class NoCookies(CookieJar):
    """A cookie jar that keeps nothing. The process shares one client for every connector
    call: a ``Set-Cookie`` kept from one call would be sent back on the next call to that
    host, letting a connector link one person's request to another's. (aiohttp's own jar
    is a dummy too; this is httpx's, above it.)"""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: Cookie) -> None:
        return None


def shared_client(*, timeout: float = 10.0, max_connections: int = 256) -> httpx.AsyncClient:
    """The one client a process shares (connector calls, JWKS fetches)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=128)
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        cookies=NoCookies(),
    )
