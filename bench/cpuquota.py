"""A CPU quota per benchmark process: each process in a cgroup of its own that may use at
most a fraction of one core, as if it ran on a small host of its own.

Why: a scaling figure (two worker processes against one) measured on a 2-core machine that
also runs PostgreSQL, the connector server and the bench mostly measures that machine. One
worker process uses a whole core and the rest take most of the other, so a second process
finds no core to run on. With every worker held to the same quota (say half a core), one
worker is limited by its quota, two workers get twice the CPU while the machine keeps
headroom for the shared parts, and the ratio of the two shows what adding a worker host
gives: the cost of contention in the database and of duplicated work, which is what the
design decides.

Linux only, and it needs write access to the cgroup file system (root, or a delegated
subtree). Both cgroup v1 (the ``cpu`` controller's ``cpu.cfs_quota_us``) and v2
(``cpu.max``) are handled. A quota period of 10 ms (the kernel's default is 100 ms) spreads
the throttling finely, so a throttled process stalls for milliseconds, not tenths of a
second.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 10_000


class QuotaUnavailable(RuntimeError):
    """No writable cgroup CPU controller here: say why, the bench cannot apply a quota."""


class CpuQuotas:
    """Creates one cgroup per process (``dsr-bench-<pid>-<name>``), each limited to
    ``fraction`` of one core, and removes them again (``release``, ``release_all``)."""

    def __init__(self, fraction: float, *, root: Path = CGROUP_ROOT) -> None:
        if not 0.05 <= fraction <= 4:
            raise ValueError("a CPU quota is between 0.05 and 4 cores")
        self.fraction = fraction
        self.version, self.base = _controller(root)
        self.groups: dict[str, Path] = {}

    def apply(self, pid: int, name: str) -> Path:
        """Move process ``pid`` (all its threads) into its own cgroup with the quota."""
        group = self.base / f"dsr-bench-{os.getpid()}-{name}"
        group.mkdir(exist_ok=True)
        self.groups[name] = group  # removed by release() even if a write below fails
        quota = max(1000, round(self.fraction * PERIOD_US))
        if self.version == 1:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        (group / "cgroup.procs").write_text(str(pid))
        return group

    def throttled_seconds(self, name: str) -> float | None:
        """How long the kernel held the group's processes back so far (None if unknown)."""
        group = self.groups.get(name)
        if group is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            for line in (group / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "throttled_time":  # v1, nanoseconds
                    return int(value) / 1e9
                if key == "throttled_usec":  # v2
                    return int(value) / 1e6
        return None

    def release(self, name: str) -> None:
        """Remove the group once its processes are gone (a group with members cannot go)."""
        group = self.groups.pop(name, None)
        if group is None:
            return
        for _ in range(50):
            try:
                group.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)  # the stopped process is still being reaped

    def release_all(self) -> None:
        for name in list(self.groups):
            self.release(name)


def _controller(root: Path) -> tuple[int, Path]:
    """The cgroup version and the directory to create groups in, or QuotaUnavailable."""
    v2_controllers = root / "cgroup.controllers"
    if v2_controllers.exists():
        if "cpu" not in v2_controllers.read_text().split():
            raise QuotaUnavailable(f"the cgroup v2 hierarchy at {root} has no cpu controller")
        try:
            subtree = root / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
        except OSError as exc:
            raise QuotaUnavailable(f"cannot enable the cpu controller: {exc}") from exc
        base = root
        version = 2
    else:
        base = root / "cpu"
        if not (base / "cpu.cfs_quota_us").exists():
            raise QuotaUnavailable(f"no cgroup v1 cpu controller mounted at {base}")
        version = 1
    if not os.access(base, os.W_OK):
        raise QuotaUnavailable(f"{base} is not writable (a quota needs root or a delegated cgroup)")
    return version, base
