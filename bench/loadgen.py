"""Closed-loop HTTP/1.1 load generator: N concurrent clients, each on its own keep-alive
connection, one request in flight per client, for a fixed duration (time-bounded) or until a
request budget is spent (count-bounded), whichever comes first.

Two clients:

- ``raw`` (default): asyncio streams, hand-written HTTP/1.1 (request bytes built by the
  caller, response parsed by Content-Length or chunked). About 10x cheaper per request than
  httpx, so the generator does not steal the server's CPU on a 2-core machine.
- ``httpx``: ``httpx.AsyncClient`` with a 32-connection keep-alive pool, for comparison.

Only loopback targets are accepted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# A request factory returns (method, path, headers, body) for the n-th request.
RequestFactory = Callable[[int], tuple[str, str, dict[str, str], bytes]]


def check_loopback(host: str) -> None:
    if host == "localhost":
        return
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing to load a non-loopback address: {host}")


@dataclass
class PhaseResult:
    name: str
    seconds: float
    latencies_ns: list[int] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_seconds: float = 0.0  # the generator's own CPU time over the phase
    next_n: int = 0  # the first request number not used (for distinct bodies across phases)

    @property
    def count(self) -> int:
        return len(self.latencies_ns)

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] / 1e6

    def summary(self) -> dict[str, object]:
        return {
            "phase": self.name,
            "seconds": round(self.seconds, 2),
            "requests": self.count,
            "ok": self.ok,
            "req_per_s": round(self.rate(), 1),
            "p50_ms": round(self.percentile_ms(50), 2),
            "p95_ms": round(self.percentile_ms(95), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
            "max_ms": round(self.percentile_ms(100), 2),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "loadgen_cpu_pct": round(100 * self.cpu_seconds / self.seconds, 1)
            if self.seconds
            else 0.0,
        }


class _Budget:
    """Hands out request numbers until the count or the time runs out."""

    def __init__(self, start: int, limit: int | None, deadline: float) -> None:
        self.next, self.limit, self.deadline = start, limit, deadline

    def take(self) -> int | None:
        if time.monotonic() >= self.deadline:
            return None
        if self.limit is not None and self.next >= self.limit:
            return None
        n = self.next
        self.next += 1
        return n


def _encode(method: str, path: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body, and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, rest = head.partition(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length, chunked, close = None, False, False
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size + 2))
        body = b"".join(p[:-2] for p in parts)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body = b""
    return status, body, not close


async def _raw_client(
    host: str,
    port: int,
    factory: RequestFactory,
    budget: _Budget,
    result: PhaseResult,
    check: Callable[[int, bytes], None] | None,
) -> None:
    reader = writer = None
    host_header = f"{host}:{port}"
    try:
        while (n := budget.take()) is not None:
            method, path, headers, body = factory(n)
            payload = _encode(method, path, host_header, headers, body)
            started = time.perf_counter_ns()
            try:
                if reader is None or writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(payload)
                status, answer, keep = await asyncio.wait_for(_read_response(reader), 30)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                result.errors[type(exc).__name__] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            result.latencies_ns.append(time.perf_counter_ns() - started)
            result.statuses[status] += 1
            if check is not None:
                check(status, answer)
            if not keep:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def _httpx_client(
    client: object,
    factory: RequestFactory,
    budget: _Budget,
    result: PhaseResult,
    check: Callable[[int, bytes], None] | None,
) -> None:
    import httpx

    assert isinstance(client, httpx.AsyncClient)
    while (n := budget.take()) is not None:
        method, path, headers, body = factory(n)
        started = time.perf_counter_ns()
        try:
            answer = await client.request(method, path, headers=headers, content=body or None)
        except httpx.HTTPError as exc:
            result.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.01)
            continue
        result.latencies_ns.append(time.perf_counter_ns() - started)
        result.statuses[answer.status_code] += 1
        if check is not None:
            check(answer.status_code, answer.content)


async def run_phase(
    name: str,
    *,
    host: str,
    port: int,
    factory: RequestFactory,
    concurrency: int,
    duration: float,
    max_requests: int | None = None,
    start_at: int = 0,
    client: str = "raw",
    check: Callable[[int, bytes], None] | None = None,
) -> PhaseResult:
    """Run ``concurrency`` closed-loop clients for ``duration`` seconds (or until request
    number ``max_requests`` is reached)."""
    check_loopback(host)
    result = PhaseResult(name=name, seconds=0.0)
    budget = _Budget(start_at, max_requests, time.monotonic() + duration)
    cpu0, t0 = time.process_time(), time.perf_counter()
    if client == "raw":
        await asyncio.gather(
            *(_raw_client(host, port, factory, budget, result, check) for _ in range(concurrency))
        )
    elif client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=f"http://{host}:{port}", limits=limits, timeout=30.0
        ) as http:
            await asyncio.gather(
                *(_httpx_client(http, factory, budget, result, check) for _ in range(concurrency))
            )
    else:
        raise ValueError(f"unknown client {client!r}")
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - cpu0
    result.next_n = budget.next
    return result
