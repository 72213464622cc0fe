"""Retry decisions: exponential backoff with full jitter, ``Retry-After``, ``max_attempts``."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.jobs.retry import GiveUp, Retry, backoff_ceiling, decide

BASE, CAP = 2.0, 600.0


def fixed(value: float):  # type: ignore[no-untyped-def]
    return lambda: value


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (9, 512.0), (10, 600.0), (50, 600.0)],
)
def test_ceiling_doubles_from_base_up_to_the_cap(attempt: int, expected: float) -> None:
    assert backoff_ceiling(attempt, base=BASE, cap=CAP) == expected


@pytest.mark.parametrize(
    ("attempt", "rand", "delay"),
    [
        (1, 0.0, 0.0),
        (1, 0.5, 1.0),
        (1, 1.0, 2.0),
        (2, 1.0, 4.0),
        (3, 0.5, 4.0),
        (4, 1.0, 16.0),
        (9, 0.5, 256.0),
        (10, 1.0, 600.0),  # 2 * 2^9 = 1024, capped
        (10, 0.5, 300.0),
        (30, 0.0, 0.0),  # full jitter: the delay may be anything from zero to the ceiling
    ],
)
def test_full_jitter_scales_the_ceiling(attempt: int, rand: float, delay: float) -> None:
    decision = decide(attempt=attempt, max_attempts=100, base=BASE, cap=CAP, rand=fixed(rand))
    assert decision == Retry(delay)


@pytest.mark.parametrize(
    ("attempt", "rand", "retry_after", "delay"),
    [
        (1, 0.0, 30.0, 30.0),  # the server's wish wins over a shorter jittered delay
        (1, 1.0, 30.0, 30.0),
        (9, 1.0, 30.0, 512.0),  # ... but never shortens our own backoff
        (1, 0.5, 3600.0, CAP),  # capped
        (1, 0.0, -5.0, 0.0),  # a nonsensical negative value asks for nothing
        (1, 0.5, 0.0, 1.0),
    ],
)
def test_retry_after_is_a_floor_capped_by_the_cap(
    attempt: int, rand: float, retry_after: float, delay: float
) -> None:
    decision = decide(
        attempt=attempt,
        max_attempts=100,
        base=BASE,
        cap=CAP,
        retry_after=retry_after,
        rand=fixed(rand),
    )
    assert decision == Retry(delay)


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "gives_up"),
    [(1, 1, True), (1, 2, False), (4, 5, False), (5, 5, True), (6, 5, True), (59, 60, False)],
)
def test_gives_up_once_max_attempts_are_spent(
    attempt: int, max_attempts: int, gives_up: bool
) -> None:
    decision = decide(
        attempt=attempt,
        max_attempts=max_attempts,
        base=BASE,
        cap=CAP,
        retry_after=10.0,  # a Retry-After does not buy extra attempts
        rand=fixed(1.0),
    )
    assert isinstance(decision, GiveUp) is gives_up
    if gives_up:
        assert str(attempt) in decision.reason  # type: ignore[union-attr]


def test_default_randomness_stays_under_the_ceiling() -> None:
    decisions = [decide(attempt=3, max_attempts=10, base=BASE, cap=CAP) for _ in range(50)]
    delays = {d.delay_seconds for d in decisions if isinstance(d, Retry)}
    assert len(delays) > 1  # jittered, not a fixed schedule
    assert all(0.0 <= d <= 8.0 for d in delays)


@given(
    attempt=st.integers(min_value=1, max_value=100_000),
    max_attempts=st.integers(min_value=1, max_value=100_000),
    base=st.floats(min_value=1e-3, max_value=1e6),
    cap=st.floats(min_value=1e-3, max_value=1e6),
    retry_after=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    rand=st.floats(min_value=0.0, max_value=1.0),
)
def test_delay_is_always_between_zero_and_the_cap(
    attempt: int,
    max_attempts: int,
    base: float,
    cap: float,
    retry_after: float | None,
    rand: float,
) -> None:
    decision = decide(
        attempt=attempt,
        max_attempts=max_attempts,
        base=base,
        cap=cap,
        retry_after=retry_after,
        rand=fixed(rand),
    )
    if attempt >= max_attempts:
        assert isinstance(decision, GiveUp)
        return
    assert isinstance(decision, Retry)
    assert not math.isnan(decision.delay_seconds)
    assert 0.0 <= decision.delay_seconds <= cap
