"""Which code runs which job kind, and which ticks recur. Filled by domains at start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.jobs.models import Job
    from app.jobs.worker import JobContext

Handler = Callable[["JobContext", "Job"], Awaitable[object]]


class _Finished:
    """Returned by a handler that recorded its job's end itself, inside the same unit of
    work as the job's effects (``jobs.service.finish``), so the two commit together."""

    def __repr__(self) -> str:
        return "FINISHED"


FINISHED = _Finished()


@dataclass(frozen=True)
class Periodic:
    kind: str
    every_seconds: float


class JobError(Exception):
    """A handler's failure. ``permanent`` failures are not retried; ``retry_after`` (seconds)
    asks for at least that delay before the next attempt."""

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


HANDLERS: dict[str, Handler] = {}
PERIODIC: dict[str, Periodic] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        HANDLERS[kind] = func
        return func

    return register


def periodic(kind: str, *, every_seconds: float) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        HANDLERS[kind] = func
        PERIODIC[kind] = Periodic(kind, every_seconds)
        return func

    return register
