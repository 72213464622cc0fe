"""``dsr serve --workers N``: N server processes on one port, each with a listening socket
of its own.

uvicorn's multi-process mode shares one listening socket between its processes, and asyncio
accepts every waiting connection at once: a burst of keep-alive connections (a load
balancer's pool, a load generator's clients) went to whichever process woke first, so one
process served 30 or all 32 connections while the other idled. Here each process binds the
port with ``SO_REUSEPORT`` and Linux spreads new connections over the processes. Elsewhere
(other kernels accept ``SO_REUSEPORT`` without spreading connections), uvicorn's own mode is
used.

The parent only supervises: it starts the processes (``spawn``: nothing of its own state is
shared), replaces one that dies while serving (with a growing delay if it keeps dying), stops
everything when one cannot start (its application failed to start up), and on SIGTERM or
SIGINT asks each to finish (SIGTERM: uvicorn's graceful shutdown) and waits for them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn

from app.logs import setup_logging

log = logging.getLogger("dsr")

APP = "app.main:create_app"
# How every ``dsr serve`` process runs uvicorn: logs are the service's own (JSON, ids only).
UVICORN_OPTIONS: dict[str, Any] = {"log_level": "warning", "access_log": False}
STOP_GRACE_SECONDS = 30.0
# A server process exits with this when its application did not start (uvicorn's own code).
START_FAILED = 3
REPLACE_DELAY_MAX_SECONDS = 30.0


def has_reuse_port() -> bool:
    """Whether the kernel spreads connections over sockets bound with ``SO_REUSEPORT``."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _end_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor dies (Linux): a supervisor killed with
    SIGKILL would otherwise leave its servers holding the port, and the next ``dsr serve``
    could not start."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _serve_one(app: str, host: str, port: int, log_level: str, parent: int) -> None:
    """One server process: its own socket in the port's reuse-port group. Exits with
    ``START_FAILED`` when it never served (the application's start-up failed, or the
    process before it)."""
    server: uvicorn.Server | None = None
    try:
        _end_with_parent(parent)
        setup_logging(log_level)
        sock = listening_socket(host, port, reuse_port=True)
        config = uvicorn.Config(app, factory=True, host=host, port=port, **UVICORN_OPTIONS)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    except Exception:
        if server is not None and server.started:
            raise
        log.exception("serving.start_failed")
    if server is None or not server.started:
        sys.exit(START_FAILED)


def serve(host: str, port: int, workers: int, *, app: str = APP, log_level: str = "INFO") -> None:
    """Serve ``app`` (an import string naming an application factory) in ``workers``
    processes until SIGTERM or SIGINT. (The benchmark serves its reference app this way.)"""
    if workers <= 1 or not has_reuse_port():
        uvicorn.run(app, factory=True, host=host, port=port, workers=workers, **UVICORN_OPTIONS)
        return
    if port == 0:
        sys.exit("dsr: --workers needs a fixed --port (each process binds it)")
    # Fail at once when anything holds the port, another reuse-port server included (a plain
    # bind is refused where a reuse-port bind would join its group and share its traffic).
    try:
        listening_socket(host, port, reuse_port=False).close()
    except OSError as exc:
        sys.exit(f"dsr: cannot listen on {host}:{port}: {exc.strerror or exc}")
    if not Supervisor(app, host, port, workers, log_level=log_level).run():
        sys.exit("dsr: a server process failed to start (see its log above)")


@dataclass
class _Slot:
    process: BaseProcess
    started_at: float
    delay: float = 0.0  # before the next replacement; doubles while replacements keep dying
    due: float | None = None  # when the dead process's replacement starts


class Supervisor:
    def __init__(self, app: str, host: str, port: int, workers: int, *, log_level: str) -> None:
        self.app, self.host, self.port, self.log_level = app, host, port, log_level
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []
        self._stopping = False
        self._failed = False

    def _process(self) -> BaseProcess:
        process = self._context.Process(
            target=_serve_one,
            args=(self.app, self.host, self.port, self.log_level, os.getpid()),
            name="dsr serve",
        )
        process.start()
        return process

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> bool:
        """Serve until a signal; False when a process could not start."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.workers):  # each kept as it starts: all are stopped at the end
                self._slots.append(_Slot(self._process(), time.monotonic()))
            while not self._stopping:
                time.sleep(0.2)
                self._replace_dead(time.monotonic())
        finally:
            self._terminate_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return not self._failed

    def _replace_dead(self, now: float) -> None:
        for slot in self._slots:
            if slot.process.is_alive():
                if now - slot.started_at > 60:
                    slot.delay = 0.0  # it served a minute: a later death is not a crash loop
                continue
            if slot.process.exitcode == START_FAILED:
                log.error("serving.start_failed", extra={"exitcode": START_FAILED})
                self._stopping = self._failed = True
                return
            if slot.due is None:
                slot.due = now + slot.delay
                log.warning(
                    "serving.process_died",
                    extra={"exitcode": slot.process.exitcode, "replaced_in_s": slot.delay},
                )
            if now >= slot.due:
                slot.process, slot.started_at, slot.due = self._process(), now, None
                slot.delay = min(REPLACE_DELAY_MAX_SECONDS, max(1.0, slot.delay * 2))

    def _terminate_all(self) -> None:
        processes = [slot.process for slot in self._slots]
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes its requests and lifespan
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
