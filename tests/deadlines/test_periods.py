"""Due-date arithmetic against hand-checked cases (calendars of 2025 and 2026)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from app.deadlines import (
    IdentityWait,
    NoExtension,
    Period,
    acknowledgement_due,
    add_period,
    calendar_for,
    compute_deadline,
    days_left,
    due_at_for,
    get_regime,
    is_overdue,
    reminders_due,
)

PARIS = ZoneInfo("Europe/Paris")
LONDON = ZoneInfo("Europe/London")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
SAO_PAULO = ZoneInfo("America/Sao_Paulo")
# Any instant: only open identity waits read it.
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def gdpr_deadline(received_at: datetime, **kwargs):
    kwargs.setdefault("regime", get_regime("gdpr"))
    kwargs.setdefault("now", NOW)
    return compute_deadline(
        received_at=received_at, tz=PARIS, calendar=calendar_for("FR"), **kwargs
    )


@pytest.mark.parametrize(
    ("day", "period", "expected"),
    [
        (date(2025, 3, 5), Period(months=1), date(2025, 4, 5)),
        (date(2026, 1, 31), Period(months=1), date(2026, 2, 28)),
        (date(2024, 1, 31), Period(months=1), date(2024, 2, 29)),  # leap year
        (date(2025, 1, 31), Period(months=3), date(2025, 4, 30)),
        (date(2025, 12, 31), Period(months=2), date(2026, 2, 28)),  # across the year
        (date(2025, 11, 30), Period(months=1), date(2025, 12, 30)),
        (date(2025, 3, 15), Period(months=12), date(2026, 3, 15)),
        (date(2025, 12, 20), Period(days=15), date(2026, 1, 4)),
        (date(2024, 2, 14), Period(days=45), date(2024, 3, 30)),
    ],
)
def test_add_period_counts_months_with_end_of_month_clamp(
    day: date, period: Period, expected: date
) -> None:
    assert add_period(day, period) == expected


@pytest.mark.parametrize(
    ("received_at", "nominal_end", "due_date"),
    [
        # 28 Feb 2026 is a Saturday (31 Feb does not exist): Monday 2 March.
        (utc(2026, 1, 31, 12), date(2026, 2, 28), date(2026, 3, 2)),
        # 5 April 2025 is a Saturday.
        (utc(2025, 3, 5, 9), date(2025, 4, 5), date(2025, 4, 7)),
        # 1 May 2026 is a holiday on a Friday, then a weekend.
        (utc(2026, 4, 1, 9), date(2026, 5, 1), date(2026, 5, 4)),
        # 23:30Z on 31 January is already 1 February in Paris; 1 March 2026 is a Sunday.
        (utc(2026, 1, 31, 23, 30), date(2026, 3, 1), date(2026, 3, 2)),
        # A working day stays put.
        (utc(2025, 1, 31, 9), date(2025, 2, 28), date(2025, 2, 28)),
    ],
)
def test_gdpr_due_date(received_at: datetime, nominal_end: date, due_date: date) -> None:
    deadline = gdpr_deadline(received_at)

    assert deadline.nominal_end == nominal_end
    assert deadline.due_date == due_date
    assert deadline.paused_days == 0
    assert deadline.extended is False
    assert deadline.received_at == received_at


def test_receipt_day_is_the_local_day() -> None:
    deadline = gdpr_deadline(utc(2026, 1, 31, 23, 30))

    assert deadline.receipt_day == date(2026, 2, 1)
    assert deadline.start_day == date(2026, 2, 1)


@pytest.mark.parametrize(
    ("received_at", "due_date"),
    [
        (utc(2025, 1, 31, 9), date(2025, 4, 30)),  # total 3 months, clamped to 30 April
        (utc(2026, 1, 31, 23, 30), date(2026, 5, 4)),  # 1 May holiday, weekend
    ],
)
def test_gdpr_extension_is_three_months_in_total(received_at: datetime, due_date: date) -> None:
    deadline = gdpr_deadline(received_at, extended=True)

    assert deadline.due_date == due_date
    assert deadline.extended is True


@pytest.mark.parametrize(
    ("due_date", "due_at"),
    [
        (date(2026, 3, 2), utc(2026, 3, 2, 22, 59, 59)),  # CET, UTC+1
        (date(2026, 7, 1), utc(2026, 7, 1, 21, 59, 59)),  # CEST, UTC+2
        (date(2026, 3, 29), utc(2026, 3, 29, 21, 59, 59)),  # clocks went forward that night
        (date(2026, 10, 25), utc(2026, 10, 25, 22, 59, 59)),  # clocks went back that night
    ],
)
def test_due_at_is_end_of_local_day_in_utc(due_date: date, due_at: datetime) -> None:
    result = due_at_for(due_date, PARIS)

    assert result == due_at
    assert result.utcoffset() is not None
    assert result.utcoffset().total_seconds() == 0


def test_deadline_due_at_matches_due_date() -> None:
    deadline = gdpr_deadline(utc(2026, 1, 31, 12))

    assert deadline.due_at == utc(2026, 3, 2, 22, 59, 59)


@pytest.mark.parametrize(
    ("received_at", "due_date"),
    [
        (utc(2026, 1, 5, 17), date(2026, 2, 19)),  # 45 days, a Thursday
        # 15 Feb 2026 is a Sunday and 16 Feb Presidents' Day.
        (utc(2026, 1, 1, 20), date(2026, 2, 17)),
    ],
)
def test_ccpa_counts_45_calendar_days(received_at: datetime, due_date: date) -> None:
    deadline = compute_deadline(
        regime=get_regime("ccpa"),
        received_at=received_at,
        tz=LOS_ANGELES,
        calendar=calendar_for("US-CA"),
        now=NOW,
    )

    assert deadline.due_date == due_date


def test_ccpa_extension_is_90_days_in_total() -> None:
    deadline = compute_deadline(
        regime=get_regime("ccpa"),
        received_at=utc(2026, 1, 5, 17),
        tz=LOS_ANGELES,
        calendar=calendar_for("US-CA"),
        now=NOW,
        extended=True,
    )

    assert deadline.nominal_end == date(2026, 4, 5)  # a Sunday
    assert deadline.due_date == date(2026, 4, 6)


@pytest.mark.parametrize(
    ("country", "expected"),
    [
        ("US-CA", date(2026, 1, 20)),  # Martin Luther King Jr. Day (19 Jan) is skipped
        ("FR", date(2026, 1, 19)),
    ],
)
def test_ccpa_acknowledgement_within_10_business_days(country: str, expected: date) -> None:
    due = acknowledgement_due(
        regime=get_regime("ccpa"),
        received_at=utc(2026, 1, 5, 17),  # Monday 5 January, 09:00 in Los Angeles
        tz=LOS_ANGELES,
        calendar=calendar_for(country),
    )

    assert due == expected


@pytest.mark.parametrize("code", ["gdpr", "gdpr-fr", "uk-gdpr", "lgpd"])
def test_no_acknowledgement_deadline_outside_ccpa(code: str) -> None:
    due = acknowledgement_due(
        regime=get_regime(code),
        received_at=utc(2026, 1, 5, 17),
        tz=PARIS,
        calendar=calendar_for("FR"),
    )

    assert due is None


@pytest.mark.parametrize(
    ("received_at", "due_date"),
    [
        (utc(2026, 3, 2, 12), date(2026, 3, 17)),
        (utc(2026, 3, 6, 12), date(2026, 3, 23)),  # 21 March is a Saturday
    ],
)
def test_lgpd_counts_15_days(received_at: datetime, due_date: date) -> None:
    deadline = compute_deadline(
        regime=get_regime("lgpd"),
        received_at=received_at,
        tz=SAO_PAULO,
        calendar=calendar_for("BR"),
        now=NOW,
    )

    assert deadline.due_date == due_date


def test_lgpd_has_no_extension() -> None:
    with pytest.raises(NoExtension):
        compute_deadline(
            regime=get_regime("lgpd"),
            received_at=utc(2026, 3, 2, 12),
            tz=SAO_PAULO,
            calendar=calendar_for("BR"),
            now=NOW,
            extended=True,
        )


def test_no_extension_is_a_value_error() -> None:
    assert issubclass(NoExtension, ValueError)


@pytest.mark.parametrize(
    ("wait", "now", "paused_days", "due_date"),
    [
        # 3 local days awaited: 5 April (Sat) + 3 = Tuesday 8 April instead of Monday 7.
        (IdentityWait(utc(2025, 3, 10, 10), utc(2025, 3, 13, 15)), NOW, 3, date(2025, 4, 8)),
        # 23:30Z is already the next day in Paris: 11 to 13 March local, 2 days.
        (
            IdentityWait(utc(2025, 3, 10, 23, 30), utc(2025, 3, 13, 22, 30)),
            NOW,
            2,
            date(2025, 4, 7),
        ),
        # Still awaited: counted up to now (10 to 20 March).
        (IdentityWait(utc(2025, 3, 10, 10), None), utc(2025, 3, 20, 12), 10, date(2025, 4, 15)),
        # Asked and answered the same day: no suspension.
        (IdentityWait(utc(2025, 3, 10, 8), utc(2025, 3, 10, 16)), NOW, 0, date(2025, 4, 7)),
    ],
)
def test_gdpr_fr_suspends_the_clock_while_identity_is_awaited(
    wait: IdentityWait, now: datetime, paused_days: int, due_date: date
) -> None:
    deadline = gdpr_deadline(
        utc(2025, 3, 5, 9), regime=get_regime("gdpr-fr"), identity_waits=[wait], now=now
    )

    assert deadline.nominal_end == date(2025, 4, 5)
    assert deadline.paused_days == paused_days
    assert deadline.due_date == due_date
    assert deadline.start_day == date(2025, 3, 5)


def test_overlapping_suspensions_count_each_day_once() -> None:
    waits = [
        IdentityWait(utc(2025, 3, 10, 10), utc(2025, 3, 13, 10)),
        IdentityWait(utc(2025, 3, 12, 10), utc(2025, 3, 14, 10)),
    ]

    deadline = gdpr_deadline(utc(2025, 3, 5, 9), regime=get_regime("gdpr-fr"), identity_waits=waits)

    assert deadline.paused_days == 4  # 10 to 14 March


@pytest.mark.parametrize("code", ["gdpr", "ccpa"])
def test_identity_waits_are_ignored_without_a_wait_rule(code: str) -> None:
    waits = [IdentityWait(utc(2025, 3, 10, 10), utc(2025, 3, 20, 10))]

    with_waits = gdpr_deadline(utc(2025, 3, 5, 9), regime=get_regime(code), identity_waits=waits)
    without = gdpr_deadline(utc(2025, 3, 5, 9), regime=get_regime(code))

    assert with_waits.due_date == without.due_date
    assert with_waits.paused_days == 0
    assert with_waits.start_day == with_waits.receipt_day


@pytest.mark.parametrize(
    ("waits", "now", "start_day", "due_date"),
    [
        # Arrived 20 March: 20 April 2025 is a Sunday, 21 April Easter Monday.
        (
            [IdentityWait(utc(2025, 3, 6, 10), utc(2025, 3, 20, 10))],
            NOW,
            date(2025, 3, 20),
            date(2025, 4, 22),
        ),
        # The last wait counts.
        (
            [
                IdentityWait(utc(2025, 3, 6, 10), utc(2025, 3, 7, 10)),
                IdentityWait(utc(2025, 3, 8, 10), utc(2025, 3, 12, 10)),
            ],
            NOW,
            date(2025, 3, 12),
            date(2025, 4, 14),  # 12 April is a Saturday
        ),
        # Still awaited: provisionally from today.
        (
            [IdentityWait(utc(2025, 3, 6, 10), None)],
            utc(2025, 3, 10, 12),
            date(2025, 3, 10),
            date(2025, 4, 10),
        ),
    ],
)
def test_uk_gdpr_restarts_from_the_day_identity_arrives(
    waits: list[IdentityWait], now: datetime, start_day: date, due_date: date
) -> None:
    deadline = compute_deadline(
        regime=get_regime("uk-gdpr"),
        received_at=utc(2025, 3, 5, 9),
        tz=LONDON,
        calendar=calendar_for("GB-ENG"),
        now=now,
        identity_waits=waits,
    )

    assert deadline.receipt_day == date(2025, 3, 5)
    assert deadline.start_day == start_day
    assert deadline.due_date == due_date
    assert deadline.paused_days == 0


def test_uk_gdpr_without_waits_runs_from_receipt() -> None:
    deadline = compute_deadline(
        regime=get_regime("uk-gdpr"),
        received_at=utc(2025, 3, 5, 9),
        tz=LONDON,
        calendar=calendar_for("GB-ENG"),
        now=NOW,
    )

    assert deadline.start_day == date(2025, 3, 5)
    assert deadline.due_date == date(2025, 4, 7)


def test_naive_receipt_is_rejected() -> None:
    with pytest.raises(ValueError, match="received_at"):
        gdpr_deadline(datetime(2026, 1, 31, 12))  # naive on purpose


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="now"):
        gdpr_deadline(utc(2026, 1, 31, 12), now=datetime(2026, 2, 1))


def test_naive_identity_wait_is_rejected() -> None:
    with pytest.raises(ValueError, match="started_at"):
        IdentityWait(datetime(2026, 2, 1), None)


def test_identity_wait_cannot_end_before_it_starts() -> None:
    with pytest.raises(ValueError, match="end before"):
        IdentityWait(utc(2026, 2, 2), utc(2026, 2, 1))


@pytest.mark.parametrize(
    ("now", "left", "overdue"),
    [
        (utc(2026, 3, 1, 22, 59, 59), 1, False),  # 23:59:59 on 1 March in Paris
        (utc(2026, 3, 1, 23, 0, 0), 0, False),  # midnight: the last day begins
        (utc(2026, 3, 2, 22, 59, 59), 0, False),  # the last second
        (utc(2026, 3, 2, 23, 0, 0), -1, True),  # midnight: overdue
        (utc(2026, 3, 5, 12), -3, True),
    ],
)
def test_days_left_and_overdue_around_local_midnight(
    now: datetime, left: int, overdue: bool
) -> None:
    due_date = date(2026, 3, 2)
    due_at = due_at_for(due_date, PARIS)

    assert days_left(due_date, now=now, tz=PARIS) == left
    assert is_overdue(due_at, now=now) is overdue


@pytest.mark.parametrize(
    ("now", "already_sent", "expected"),
    [
        (utc(2026, 2, 20, 12), (), []),  # 10 days left
        (utc(2026, 2, 25, 12), (), [7]),  # 5 days left
        (utc(2026, 2, 27, 12), [7], [3]),  # 3 days left
        (utc(2026, 2, 28, 12), (), [7, 3]),  # 2 days left, a sweep was missed
        (utc(2026, 3, 2, 12), {7, 3}, [1]),  # last day
        (utc(2026, 3, 4, 12), {7, 3}, [1]),  # overdue and never sent: staff must know
        (utc(2026, 3, 4, 12), {7, 3, 1}, []),
    ],
)
def test_reminders_due(now: datetime, already_sent, expected: list[int]) -> None:
    result = reminders_due(
        due_date=date(2026, 3, 2),
        now=now,
        tz=PARIS,
        thresholds=[1, 7, 3],
        already_sent=already_sent,
    )

    assert result == expected


def test_explanation_names_the_holiday_and_the_steps() -> None:
    deadline = gdpr_deadline(utc(2026, 4, 1, 9))
    holiday = calendar_for("FR").holiday_name(date(2026, 5, 1))
    text = "\n".join(deadline.explanation)

    assert holiday is not None
    assert holiday in text
    assert "GDPR Art. 12(3)" in text
    assert "2026-04-01T09:00:00Z" in text
    assert "Wednesday 1 April 2026" in text
    assert "the day of receipt is not counted" in text
    assert "Saturday 2 May 2026 is a Saturday" in text
    assert "Monday 4 May 2026" in text
    assert "2026-05-04T21:59:59Z" in text


def test_explanation_tells_why_the_month_end_was_clamped() -> None:
    text = "\n".join(gdpr_deadline(utc(2026, 1, 31, 12)).explanation)

    assert "no 31 February 2026" in text
    assert "Saturday 28 February 2026 is a Saturday" in text


def test_explanation_reports_the_suspension() -> None:
    wait = IdentityWait(utc(2025, 3, 10, 10), utc(2025, 3, 13, 15))

    deadline = gdpr_deadline(
        utc(2025, 3, 5, 9), regime=get_regime("gdpr-fr"), identity_waits=[wait]
    )

    assert any("suspended for 3 days" in step for step in deadline.explanation)
