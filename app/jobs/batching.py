"""Group commit for handlers: many concurrent handlers' database steps in one transaction.

The worker runs up to ``concurrency`` jobs at once, and most of a short job's cost is the
fixed price of its transactions (statement building, round trips, commits), not their
content. A ``Coalescer`` collects what the handlers submit while the event loop is busy and
runs it as one batch: one transaction and a few set-based statements for all of them.
Batches of one coalescer run one after another; each submitter gets its own result.

A batch that raises is run again item by item through ``one`` (the unbatched path), so a
single bad item (or a deadlock between two batches) fails only itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("dsr.jobs")

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(
        self,
        name: str,
        many: Callable[[list[T]], Awaitable[list[R]]],
        one: Callable[[T], Awaitable[R]],
        *,
        max_batch: int = 64,
    ) -> None:
        self.name = name
        self._many, self._one = many, one
        self._max = max(1, max_batch)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0  # how many batches ran (tests and diagnostics)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain())
        # The batch runs to its end even if this submitter is cancelled (shutdown): its
        # transaction is all or nothing, and the others in it still want their results.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let handlers woken in the same moment join this batch
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            self.batches += 1
            try:
                results = await self._many([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError("a batch must give one result per item")
            except Exception:
                log.warning(
                    "jobs.batch_failed",
                    extra={"batch": self.name, "size": len(batch)},
                    exc_info=True,
                )
                await asyncio.gather(*(self._alone(item, future) for item, future in batch))
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _alone(self, item: T, future: asyncio.Future[R]) -> None:
        try:
            result = await self._one(item)
        except BaseException as exc:  # handed to its submitter, who handles it as before
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not future.done():
                future.set_result(result)


def coalescer(
    extras: dict[str, Any],
    name: str,
    many: Callable[[list[T]], Awaitable[list[R]]],
    one: Callable[[T], Awaitable[R]],
    *,
    max_batch: int = 64,
) -> Coalescer[T, R]:
    """The process's coalescer called ``name`` (kept in the runtime's extras), one per
    event loop: tests run several loops one after another."""
    loop = asyncio.get_running_loop()
    held: tuple[asyncio.AbstractEventLoop, Coalescer[T, R]] | None = extras.get(f"coalescer:{name}")
    if held is None or held[0] is not loop:
        held = (loop, Coalescer(name, many, one, max_batch=max_batch))
        extras[f"coalescer:{name}"] = held
    return held[1]
