"""Properties of the GDPR clock over any receipt instant from 2020 to 2035 (Paris, France)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from app.deadlines import Period, add_period, calendar_for, compute_deadline, get_regime

PARIS = ZoneInfo("Europe/Paris")
FRANCE = calendar_for("FR")
GDPR = get_regime("gdpr")
NOW = datetime(2036, 1, 1, tzinfo=UTC)

receipts = st.datetimes(
    min_value=datetime(2020, 1, 1),  # hypothesis bounds are naive
    max_value=datetime(2035, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
)
# No example database: the tests must not write into the repository.
fast = settings(max_examples=300, deadline=None, database=None)


@fast
@given(receipts)
def test_gdpr_due_date_is_the_next_working_day_on_or_after_one_month(
    received_at: datetime,
) -> None:
    deadline = compute_deadline(
        regime=GDPR, received_at=received_at, tz=PARIS, calendar=FRANCE, now=NOW
    )
    receipt_day = received_at.astimezone(PARIS).date()
    one_month = add_period(receipt_day, Period(months=1))

    # Same date next month, or that month's last day where the date does not exist.
    assert one_month.month == (receipt_day.month % 12) + 1
    assert one_month.day == receipt_day.day or (one_month + timedelta(days=1)).day == 1
    assert deadline.receipt_day == receipt_day
    assert deadline.nominal_end == one_month
    assert deadline.due_date >= one_month
    assert deadline.due_date - one_month <= timedelta(days=4)
    assert deadline.due_date.weekday() < 5
    assert FRANCE.holiday_name(deadline.due_date) is None
    # Nothing between the nominal end and the due date was a working day.
    day = one_month
    while day < deadline.due_date:
        assert not FRANCE.is_working_day(day)
        day += timedelta(days=1)


@fast
@given(receipts)
def test_extension_never_shortens_the_deadline(received_at: datetime) -> None:
    normal = compute_deadline(
        regime=GDPR, received_at=received_at, tz=PARIS, calendar=FRANCE, now=NOW
    )
    extended = compute_deadline(
        regime=GDPR, received_at=received_at, tz=PARIS, calendar=FRANCE, now=NOW, extended=True
    )

    assert extended.due_date >= normal.due_date
    assert extended.due_at >= normal.due_at
    assert FRANCE.is_working_day(extended.due_date)


@fast
@given(receipts)
def test_due_at_is_the_last_second_of_the_local_due_date(received_at: datetime) -> None:
    deadline = compute_deadline(
        regime=GDPR, received_at=received_at, tz=PARIS, calendar=FRANCE, now=NOW
    )
    local = deadline.due_at.astimezone(PARIS)

    assert deadline.due_at.utcoffset() == timedelta(0)
    assert local.date() == deadline.due_date
    assert local.time() == time(23, 59, 59)
    # One second later it is the next local day.
    assert (deadline.due_at + timedelta(seconds=1)).astimezone(PARIS).time() == time(0, 0)
