"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): where the server's time
goes, by app function (inclusive) and by leaf frame (self), in percent of the samples.

    .venv/bin/python bench/profile_summary.py bench/out/pyspy-postgresql-intake.txt
"""

from __future__ import annotations

import argparse
import re
import signal
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
IDLE = ("select (selectors.py", "poll (", "run_forever", "_run_once (", "Runner.run (")


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _relative(file: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    if "/app/" in file:
        return "app/" + file.split("/app/", 1)[1]
    return file


def short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    return f"{match['func']} ({_relative(match['file'])})"


def package_of(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return "other"
    file = _relative(match["file"])
    if file.startswith("app/"):
        return "app (the service's code)"
    if "/" not in file or file.split("/", 1)[0] in ("asyncio", "json", "email", "concurrent"):
        return "stdlib:" + file.split("/", 1)[0].removesuffix(".py")
    return file.split("/", 1)[0]


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    stacks = parse(args.profile)
    total = sum(n for _, n in stacks)
    idle = sum(n for frames, n in stacks if any(m in frames[-1] for m in IDLE))
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for frames, n in stacks:
        seen = set()
        for frame in frames:
            name = short(frame)
            if name.startswith("process ") or name in seen:
                continue
            seen.add(name)
            if "(app/" in name:
                inclusive[name] += n
        leaf[short(frames[-1])] += n
        packages[package_of(frames[-1])] += n
    print(
        f"{args.profile}: {total} samples; in the event loop's own code {100 * idle / total:.1f}%"
    )
    print("\n## self time by package (leaf frame)")
    for name, n in packages.most_common(15):
        print(f"{100 * n / total:6.1f}%  {name}")
    print("\n## app functions, inclusive")
    for name, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {name}")
    print("\n## leaf frames (self)")
    for name, n in leaf.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {name}")


if __name__ == "__main__":
    main()
