"""Seed N stored requests fast, through the service's own intake code, in-process.

Each request goes through ``app.requests.service.create_request`` exactly as
``POST /v1/requests`` does (validation of the body with ``RequestCreate``, sealing with the
server's key, blind index, deadline, audit event on the hash chain, verification code,
queued e-mail), but ``batch`` requests share one transaction and the session's autoflush is
off inside it and intake's rows kept (``app.requests.rows.batched``), so the rows of a
batch go to the database in a few multi-row INSERTs instead of one round trip per request.
The audit events are pending rows, linked into the chain by the service's linker.

The seeded requests' e-mails count as delivered long ago: their ``notifications.deliver``
jobs are marked ``succeeded`` and their outbox messages ``sent`` (content dropped), as in a
database that has run for a while; otherwise the job worker would spend the benchmark
delivering 100,000 seeded e-mails.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from bodies import body_for
from sqlalchemy import text

from app.config import Settings
from app.requests import service

try:  # --app-source may run a snapshot from before intake wrote its rows itself
    from app.requests import rows
except ImportError:  # pragma: no cover
    rows = None  # type: ignore[assignment]
from app.requests.schemas import RequestCreate
from app.runtime import build_runtime


async def seed(
    settings: Settings,
    count: int,
    *,
    tag: str,
    batch: int = 1000,
    progress: Callable[[int, float], None] | None = None,
) -> list[str]:
    """File ``count`` requests in batches; return their ids."""
    runtime = build_runtime(settings)
    ids: list[str] = []
    started = time.perf_counter()
    try:
        for first in range(0, count, batch):
            last = min(count, first + batch)
            bodies = [RequestCreate.model_validate(body_for(n, tag)) for n in range(first, last)]
            async with runtime.session() as session:
                keep = rows.batched(session) if rows is not None else contextlib.nullcontext()
                with session.no_autoflush, keep:
                    for body in bodies:
                        intake = await service.create_request(
                            session, rt=runtime, body=body, now=runtime.clock.now()
                        )
                        ids.append(intake.answer["id"])
                    if rows is not None:
                        await rows.write_batch(session)
            if progress is not None:
                progress(last, time.perf_counter() - started)
        async with runtime.session() as session:
            await session.execute(
                text(
                    "UPDATE job SET status = 'succeeded', attempts = 1 "
                    "WHERE kind = 'notifications.deliver' AND status = 'queued'"
                )
            )
            await session.execute(
                text(
                    "UPDATE outbox_message SET status = 'sent', sealed = NULL, attempts = 1, "
                    "sent_at = created_at WHERE status = 'pending'"
                )
            )
    finally:
        await runtime.aclose()
    return ids
