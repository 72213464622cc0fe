"""Retry decisions, as a pure function: exponential backoff with full jitter, honouring a
server's ``Retry-After``, capped by the job's ``max_attempts``."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Retry:
    delay_seconds: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


def backoff_ceiling(attempt: int, *, base: float, cap: float) -> float:
    """``min(cap, base * 2^(attempt-1))``: the upper bound of the jittered delay."""
    # A float exponent above 1023 overflows (OverflowError, not inf); the cap is long reached.
    return min(cap, base * 2.0 ** min(max(0, attempt - 1), 1023))


def decide(
    *,
    attempt: int,
    max_attempts: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> Retry | GiveUp:
    """What to do after failed attempt number ``attempt`` (1-based)."""
    if attempt >= max_attempts:
        return GiveUp(f"gave up after {attempt} attempts")
    delay = rand() * backoff_ceiling(attempt, base=base, cap=cap)
    if retry_after is not None:
        delay = max(delay, min(max(0.0, retry_after), cap))
    return Retry(delay)
