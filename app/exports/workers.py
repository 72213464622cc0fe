"""Systems spooled in worker processes, two at a time, while the caller writes the ZIP.

Spooling (``app.exports.spools``) is Python work on every record and holds the GIL, so a
thread beside the ZIP writer leaves the second core idle. Here each system is spooled in a
process of a pool started for the build (``spawn``: the service's process has threads, so
it is not forked) and always shut down with it. A system's spools come back pickled:
paths, counts, columns and preview rows; the spool files themselves stay on disk, encrypted
with the build's spool key, which is sent to the workers with each task (it exists only in
memory; it is never logged).

At most ``WORKERS`` systems are being spooled while the caller writes the previous one, so
at most three systems' spools exist at a time, as with the thread. An error in a worker is
raised, as it was raised there, when the caller reaches that system; leaving the ``with``
block tells the workers to stop (``spools.Stopped`` at their next chunk) and waits for
them.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from app.exports.spools import SourceFile, SystemSpools

if TYPE_CHECKING:
    from app.exports.assembly import SystemInput

WORKERS = 2
# Below this many bytes of results a build is spooled in a thread: starting the workers
# (0.15-0.5 s of a core each, most of it imports) would cost about what they save. Set
# when a thread spooled about 8 MB per CPU-second; since the column-wise CSV and the row
# builders it does 35-60 (2026-12-01), so the break-even is likely higher: not re-measured.
MIN_BYTES = 32 * 1024 * 1024

_stop: Any = None  # in a worker: the build's stop event


def worth_it(systems: list[SystemInput]) -> bool:
    """Whether to spool ``systems`` in processes: a second core, more than one system,
    enough data, and sources that can be sent to a process (a reader by path and key, not
    a closure)."""
    if (os.cpu_count() or 1) < 2 or len(systems) < 2:
        return False
    if sum(s.size for x in systems for s in x.sources) < MIN_BYTES:
        return False
    try:
        pickle.dumps([x.sources for x in systems])
    except (pickle.PicklingError, TypeError, AttributeError):
        return False
    return True


def _start(stop: Any) -> None:
    global _stop
    _stop = stop


def _spool(
    sources: list[SourceFile], only: frozenset[str] | None, directory: Path, key: bytes
) -> SystemSpools:
    """In a worker: one system's closed spools (their files deleted on an error)."""
    spools = SystemSpools(directory, key, only)
    try:
        for source in sources:
            spools.take(source, _stop)
        spools.close()
    except BaseException:
        spools.abort()
        raise
    return spools


class ProcessSpooler:
    """Like ``spools.Spooler``: iterating gives each system's closed spools, in order."""

    def __init__(self, systems: list[SystemInput], directory: Path, key: bytes) -> None:
        self._systems, self._directory, self._key = systems, directory, key
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._pool = ProcessPoolExecutor(
            WORKERS, mp_context=context, initializer=_start, initargs=(self._stop,)
        )

    def __enter__(self) -> Iterator[SystemSpools]:
        return self._results()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, system: SystemInput) -> Future[SystemSpools]:
        return self._pool.submit(
            _spool, system.sources, system.only_categories, self._directory, self._key
        )

    def _results(self) -> Iterator[SystemSpools]:
        waiting = iter(self._systems)
        running: deque[Future[SystemSpools]] = deque()
        for system in waiting:
            running.append(self._submit(system))
            if len(running) == WORKERS:
                break
        while running:
            spools = running.popleft().result()
            for system in waiting:
                running.append(self._submit(system))
                break
            yield spools
