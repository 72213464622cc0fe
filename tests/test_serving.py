"""``dsr serve --workers N`` as real processes: every process gets a share of the
connections, and the whole group stops on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.serving import has_reuse_port, listening_socket
from tests.fixtures.mail import free_port

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and has_reuse_port()),
    reason="reads Linux's /proc; SO_REUSEPORT spreads connections on Linux",
)

CONNECTIONS = 32


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSR_")}
    env.update(
        DSR_DATA_DIR=str(tmp_path / "var"),
        DSR_DATABASE_URL=f"sqlite:///{tmp_path / 'dsr.db'}",
        DSR_WORKER="off",
    )
    return env


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


ESTABLISHED, LISTEN = "01", "0A"


def _sockets_on(port: int, state: str) -> set[str]:
    """The inodes of the sockets on local ``port`` in ``state`` (/proc/net/tcp's codes)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    return inodes


def _connections_by_process(pids: list[int], port: int) -> Counter[int]:
    served = _sockets_on(port, ESTABLISHED)
    counts: Counter[int] = Counter()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            match = re.fullmatch(r"socket:\[(\d+)\]", target)
            if match and match.group(1) in served:
                counts[pid] += 1
    return counts


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env={**_env(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "2"],
        env=_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        # Both processes listen (each on a socket of its own), and the service answers.
        while len(_sockets_on(port, LISTEN)) < 2 or not _answers(port):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "dsr serve --workers 2 did not start"
            time.sleep(0.1)
        yield process, port
    finally:
        if process.poll() is None:
            for pid in _children(process.pid):  # they hold the output pipe open too
                os.kill(pid, signal.SIGKILL)
            process.kill()
        process.communicate(timeout=30)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_connections_opened_together_are_spread_over_the_processes(
    two_processes: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = two_processes
    servers = _children(process.pid)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    try:
        for client in clients:  # a request on each: every connection has been accepted
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        for client in clients:
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        counts = _connections_by_process(servers, port)
    finally:
        for client in clients:
            client.close()
    assert sum(counts.values()) == CONNECTIONS
    # The kernel hashes each connection to a process: each gets about half. (Through one
    # shared socket, the first process to wake accepted all 32.)
    assert len(counts) == 2, counts
    assert min(counts.values()) >= 4, counts


def test_sigterm_stops_every_process(two_processes: tuple[subprocess.Popen[str], int]) -> None:
    process, port = two_processes
    servers = _children(process.pid)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=40)
    assert process.returncode == 0, output
    deadline = time.monotonic() + 10  # multiprocessing's resource tracker ends on its own
    while any(Path(f"/proc/{pid}").exists() for pid in servers):
        assert time.monotonic() < deadline, "a server process outlived dsr serve"
        time.sleep(0.1)
    assert not _answers(port)


def test_the_servers_end_with_a_killed_supervisor(
    two_processes: tuple[subprocess.Popen[str], int],
) -> None:
    """A supervisor killed with SIGKILL takes its servers with it: left running, they would
    hold the port and the next ``dsr serve`` could not start."""
    process, port = two_processes
    servers = _children(process.pid)
    process.kill()
    process.communicate(timeout=30)  # the servers held its output pipe: they have exited
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in servers) or _sockets_on(port, LISTEN):
        assert time.monotonic() < deadline, "a server process outlived its supervisor"
        time.sleep(0.1)


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_taken_port_is_refused_at_once(tmp_path: Path, reuse_port: bool) -> None:
    """Also when the holder is another reuse-port server: joining it would split its traffic
    with a server of another version or database."""
    with listening_socket("127.0.0.1", 0, reuse_port=reuse_port) as taken:
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(["-m", "app.cli", "serve", "--port", str(port), "--workers", "2"], tmp_path)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_an_application_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    serve = (
        "from app.serving import serve; "
        f"serve('127.0.0.1', {port}, 2, app='tests.fixtures.broken_app:create_app')"
    )
    result = _run(["-c", serve], tmp_path, PYTHONPATH=str(Path(__file__).parent.parent))
    assert result.returncode != 0
    assert "a server process failed to start" in result.stderr
    assert time.monotonic() - started < 30  # not restarted over and over


def test_a_server_process_that_dies_is_replaced(
    two_processes: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = two_processes
    listening = _sockets_on(port, LISTEN)
    victim = next(pid for pid in _children(process.pid) if _listens(pid, listening))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # a new process in its place, listening beside the one that stayed
        servers = [
            pid for pid in _children(process.pid) if _listens(pid, _sockets_on(port, LISTEN))
        ]
        if len(servers) == 2 and victim not in servers:
            break
        assert process.poll() is None, "the supervisor stopped"
        assert time.monotonic() < deadline, "no process replaced the one that died"
        time.sleep(0.1)
    assert _answers(port)


def _listens(pid: int, inodes: set[str]) -> bool:
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                return True
    return False
