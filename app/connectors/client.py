"""One call to a connector over HTTP, classified the way the protocol says.

``200`` with a result: done. ``202``: the result comes by callback. Other ``4xx`` (not 408,
429): a permanent failure whose message is kept. ``5xx``, ``408``, ``429``, timeouts and
connection errors: retried, honouring ``Retry-After``. Redirects are not followed (a
connector that moved must be updated in the registry, not chased). The answer body is read
up to a limit: large data goes through the streamed upload, not the synchronous answer.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx
from pydantic import ValidationError

from app.connectors.schemas import ConnectorResult
from app.kit.text import without_surrogates

MESSAGE_LIMIT = 300
# A lone surrogate escape ("\ud800"): valid JSON, which pydantic's JSON parser refuses.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass(frozen=True)
class Answer:
    """What a call came back with. ``error`` is the service's account of a failure ("HTTP
    400"); ``said`` is the connector's own words from its error body, which staff need but
    which may name the person, so they go to the job's ``last_error`` and not into the
    immutable audit trail."""

    kind: Literal["result", "accepted", "permanent", "retry"]
    result: ConnectorResult | None = None
    error: str | None = None
    retry_after: float | None = None
    said: str | None = None


def with_said(error: str, said: str | None) -> str:
    """An error as staff read it: the service's account, then the connector's words."""
    return f"{error}: {said}" if said else error


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _clean(text: str) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text[:MESSAGE_LIMIT] + ("…" if len(text) > MESSAGE_LIMIT else "")


def message_of(raw: bytes) -> str:
    """The human part of an error body: a problem's detail, a message field, or the text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return _clean(raw.decode(errors="replace"))
    if isinstance(body, dict):
        for key in ("detail", "message", "error", "title"):
            if isinstance(body.get(key), str):
                return _clean(body[key])
    return _clean(json.dumps(body, ensure_ascii=False))


def describe_validation(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return without_surrogates(f"{where}: {first['msg']}")  # a key may hold one


def parse_result(raw: bytes) -> ConnectorResult:
    """A result body; ValueError (with the field at fault) when it is not one.

    A body with a lone surrogate escape is read by ``json`` instead, which keeps it: a
    record may hold one (a system's bad byte is still the person's data, and the export
    keeps it escaped), but the result's own text (categories, reasons, the message) may
    not: pydantic refuses it there, with the field at fault."""
    try:
        return ConnectorResult.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors()[0]["type"] != "json_invalid" or not _SURROGATE_ESCAPE.search(raw):
            raise ValueError(describe_validation(exc)) from None
        refused = describe_validation(exc)
    try:
        body = json.loads(raw.decode(), parse_constant=_no_constant)
    except ValueError:
        raise ValueError(refused) from None
    try:
        return ConnectorResult.model_validate(body)
    except ValidationError as exc:
        raise ValueError(describe_validation(exc)) from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # json reads NaN and Infinity; pydantic does not


async def _read(response: httpx.Response, limit: int) -> bytes | None:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def call(
    http: httpx.AsyncClient,
    *,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    answer_limit: int,
) -> Answer:
    try:
        async with asyncio.timeout(timeout):
            async with http.stream(
                "POST",
                url,
                content=body,
                headers={**headers, "content-type": "application/json"},
                timeout=httpx.Timeout(timeout),
            ) as response:
                status = response.status_code
                raw = await _read(response, answer_limit)
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
    except (TimeoutError, httpx.TimeoutException):
        return Answer("retry", error=f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Answer("retry", error=f"connection failed ({type(exc).__name__})")
    if raw is None:
        return Answer(
            "permanent",
            error=f"answer larger than {answer_limit} bytes: stream large data with PUT …/data",
        )
    if status == 200:
        try:
            result = parse_result(raw)
        except ValueError as exc:
            return Answer("permanent", error=f"invalid result: {exc}")
        return Answer("result", result=result)
    if status == 202:
        return Answer("accepted")
    if status in (408, 429) or status >= 500:
        return Answer(
            "retry", error=f"HTTP {status}", said=message_of(raw), retry_after=retry_after
        )
    if 300 <= status < 400:
        return Answer("permanent", error=f"HTTP {status}: redirects are not followed")
    return Answer("permanent", error=f"HTTP {status}", said=message_of(raw))
