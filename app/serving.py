"""``dsr serve --workers N``: N server processes on one port, each with a listening socket
of its own.

uvicorn's multi-process mode shares one listening socket between its processes, and asyncio
accepts every waiting connection at once: a burst of keep-alive connections (a load
balancer's pool, a load generator's clients) went to whichever process woke first, so one
process served all 32 connections while the other idled. Here each process binds the port
with ``SO_REUSEPORT`` and the kernel spreads new connections over the processes. Where the
platform has no ``SO_REUSEPORT``, uvicorn's own mode is used.

The parent only supervises: it starts the processes (``spawn``: nothing of its own state is
shared), replaces one that dies while serving, and on SIGTERM or SIGINT asks each to finish
(SIGTERM: uvicorn's graceful shutdown) and waits for them.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn

from app.logs import setup_logging

log = logging.getLogger("dsr")

APP = "app.main:create_app"
STOP_GRACE_SECONDS = 30.0
# A process that dies this soon after it started failed to start (a broken configuration, an
# import error): starting it again would only fail again, so the server stops instead.
START_FAILURE_SECONDS = 10.0


def has_reuse_port() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _config(host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        APP, factory=True, host=host, port=port, log_level="warning", access_log=False
    )


def _serve_one(host: str, port: int, log_level: str) -> None:
    """One server process: its own socket in the port's reuse-port group."""
    setup_logging(log_level)
    sock = listening_socket(host, port, reuse_port=True)
    uvicorn.Server(_config(host, port)).run(sockets=[sock])


def serve(host: str, port: int, workers: int, *, log_level: str = "INFO") -> None:
    """Serve the API in ``workers`` processes until SIGTERM or SIGINT."""
    if workers <= 1 or not has_reuse_port():
        if workers > 1:
            log.warning("serving.shared_socket: no SO_REUSEPORT on this platform")
        uvicorn.run(
            APP,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )
        return
    if port == 0:
        sys.exit("dsr: --workers needs a fixed --port (each process binds it)")
    # Fail at once, in the parent, when the port is taken by something else.
    try:
        listening_socket(host, port, reuse_port=True).close()
    except OSError as exc:
        sys.exit(f"dsr: cannot listen on {host}:{port}: {exc.strerror or exc}")
    if not Supervisor(host, port, workers, log_level=log_level).run():
        sys.exit("dsr: a server process failed to start (see its log above)")


class Supervisor:
    def __init__(self, host: str, port: int, workers: int, *, log_level: str) -> None:
        self.host, self.port, self.workers, self.log_level = host, port, workers, log_level
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[tuple[BaseProcess, float]] = []
        self._stopping = False
        self._failed = False

    def _start(self) -> tuple[BaseProcess, float]:
        process = self._context.Process(
            target=_serve_one, args=(self.host, self.port, self.log_level), name="dsr serve"
        )
        process.start()
        return process, time.monotonic()

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> bool:
        """Serve until a signal; False when a process failed to start."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._processes = [self._start() for _ in range(self.workers)]
            while not self._stopping:
                time.sleep(0.2)
                self._replace_dead()
        finally:
            self._terminate_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return not self._failed

    def _replace_dead(self) -> None:
        for index, (process, started) in enumerate(self._processes):
            if process.is_alive() or self._stopping:
                continue
            if time.monotonic() - started < START_FAILURE_SECONDS:
                log.error("serving.start_failed", extra={"exitcode": process.exitcode})
                self._stopping = self._failed = True
                return
            log.warning("serving.process_replaced", extra={"exitcode": process.exitcode})
            self._processes[index] = self._start()

    def _terminate_all(self) -> None:
        for process, _ in self._processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: uvicorn finishes its requests and lifespan
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process, _ in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
