"""Due-date arithmetic: from a receipt instant to the last day of the answer period.

Periods are counted as Regulation (EEC, Euratom) 1182/71 art. 3 counts them, which is how
GDPR Art. 12(3) "one month of receipt" is read:

1. the receipt instant is turned into a local day in the controller's time zone, and that day
   is not counted;
2. a period in months ends on the same date N months later, or on the last day of that month
   where the date does not exist (31 January + 1 month = 28/29 February); a period in days
   ends N days later;
3. an end on a Saturday, Sunday or public holiday moves to the next working day;
4. the period lasts until the end of its last day: ``due_at`` is 23:59:59 local on it.

Everything here is a pure function of its arguments. The current time is always passed in
(``now``), never read, so that the same inputs always give the same deadline and tests can
pin any instant.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from app.deadlines.calendar import WorkingCalendar
from app.deadlines.regimes import Period, Regime

_END_OF_DAY = time(23, 59, 59)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


class NoExtension(ValueError):
    """An extension was asked of a regime that has none (e.g. LGPD)."""


@dataclass(frozen=True)
class IdentityWait:
    """A span during which identity information requested from the subject was awaited."""

    started_at: datetime
    ended_at: datetime | None  # None: still awaited

    def __post_init__(self) -> None:
        _require_aware(self.started_at, "started_at")
        if self.ended_at is not None:
            _require_aware(self.ended_at, "ended_at")
            if self.ended_at < self.started_at:
                raise ValueError("an identity wait cannot end before it starts")


@dataclass(frozen=True)
class Deadline:
    """A computed deadline, with every intermediate value kept so staff can check it."""

    regime: str
    received_at: datetime  # as given (aware)
    receipt_day: date  # local day of receipt, not counted
    start_day: date  # receipt day, or (restart regimes) the local day identity arrived
    nominal_end: date  # end of the period before suspension days and rolling
    paused_days: int  # suspension days added (suspend regimes), 0 otherwise
    due_date: date  # the last day, local
    due_at: datetime  # 23:59:59 local on due_date, as aware UTC
    extended: bool
    # Human-readable steps for staff, in English; ids and dates only, never personal data.
    explanation: list[str] = field(default_factory=list, hash=False)


def add_period(day: date, period: Period) -> date:
    """The last day of ``period`` counted from ``day`` (which is itself not counted).

    Months first, clamped to the month's last day where the same date does not exist, then
    days.
    """
    month_index = day.year * 12 + (day.month - 1) + period.months
    year, month = divmod(month_index, 12)
    month += 1
    end = date(year, month, min(day.day, _last_day_of_month(year, month)))
    return end + timedelta(days=period.days)


def due_at_for(due_date: date, tz: ZoneInfo) -> datetime:
    """The instant the period expires: 23:59:59 local on ``due_date``, as aware UTC.

    Built in local time and converted, so the UTC hour follows daylight saving time.
    """
    return datetime.combine(due_date, _END_OF_DAY, tzinfo=tz).astimezone(UTC)


def compute_deadline(
    *,
    regime: Regime,
    received_at: datetime,
    tz: ZoneInfo,
    calendar: WorkingCalendar,
    now: datetime,
    extended: bool = False,
    identity_waits: Sequence[IdentityWait] = (),
) -> Deadline:
    """The due date of a request under ``regime``, with the reasoning spelled out.

    ``extended`` uses the regime's extended period (a total counted from the same start day,
    not an addition); ``NoExtension`` where the regime has none. ``identity_waits`` matter only
    to regimes whose ``identity_wait`` is ``suspend`` or ``restart``; a wait still open is
    counted up to ``now``, so such a deadline moves until the information arrives.
    """
    _require_aware(received_at, "received_at")
    _require_aware(now, "now")
    if extended and regime.extended_period is None:
        raise NoExtension(f"{regime.name} provides no extension of the answer period")
    period = regime.extended_period if extended and regime.extended_period else regime.period

    zone = _zone_name(tz)
    receipt_day = _local_day(received_at, tz)
    steps = [
        f"Regime: {regime.name}, {regime.legal_reference}.",
        f"Days are counted as whole local days in {zone}, in the manner of Regulation "
        "(EEC, Euratom) No 1182/71 art. 3.",
        f"Received {_rfc3339(received_at)}, which is {_day(receipt_day)} in {zone}; "
        "the day of receipt is not counted.",
    ]

    start_day = receipt_day
    if regime.identity_wait == "restart" and identity_waits:
        start_day, step = _restart_day(identity_waits, receipt_day=receipt_day, now=now, tz=tz)
        steps.append(step)

    nominal_end = add_period(start_day, period)
    which = (
        f"extended period of {period.describe()} in total"
        if extended
        else f"period of {period.describe()}"
    )
    steps.append(
        f"The {which} counted from {_day(start_day)} ends on {_day(nominal_end)}"
        f"{_clamp_note(start_day, period)}."
    )

    paused_days = 0
    if regime.identity_wait == "suspend" and identity_waits:
        paused_days = _paused_days(identity_waits, receipt_day=receipt_day, now=now, tz=tz)
        awaited = (
            " (still awaited: counted up to now)"
            if any(wait.ended_at is None for wait in identity_waits)
            else ""
        )
        steps.append(
            f"The clock was suspended for {_count(paused_days, 'day')} while identity "
            f"information requested from the subject was awaited{awaited}; the period now "
            f"ends on {_day(nominal_end + timedelta(days=paused_days))}."
        )
    end = nominal_end + timedelta(days=paused_days)

    due_date = end
    if regime.rolls_to_working_day:
        due_date = calendar.roll_forward(end)
        if due_date != end:
            reasons = [
                _why_not_working(day, calendar)
                for day in _days_between(end, due_date)  # all non-working by construction
            ]
            steps.append(
                f"{'; '.join(reasons)}: the deadline moves to the next working day, "
                f"{_day(due_date)}."
            )
        else:
            steps.append(f"{_day(due_date)} is a working day in {calendar.country}.")

    due_at = due_at_for(due_date, tz)
    steps.append(f"Due by the end of {_day(due_date)}: 23:59:59 {zone}, i.e. {_rfc3339(due_at)}.")
    return Deadline(
        regime=regime.code,
        received_at=received_at,
        receipt_day=receipt_day,
        start_day=start_day,
        nominal_end=nominal_end,
        paused_days=paused_days,
        due_date=due_date,
        due_at=due_at,
        extended=extended,
        explanation=steps,
    )


def days_left(due_date: date, *, now: datetime, tz: ZoneInfo) -> int:
    """Whole local days from today to ``due_date``: 0 on the last day, negative when overdue."""
    return (due_date - _local_day(now, tz)).days


def is_overdue(due_at: datetime, *, now: datetime) -> bool:
    """True once the last second of the last day has passed."""
    _require_aware(due_at, "due_at")
    _require_aware(now, "now")
    return now > due_at


def acknowledgement_due(
    *, regime: Regime, received_at: datetime, tz: ZoneInfo, calendar: WorkingCalendar
) -> date | None:
    """The last day to confirm receipt (CCPA: 10 business days), or ``None`` if not required.

    Business days are the calendar's working days; the day of receipt is not counted.
    """
    if regime.acknowledgement_business_days is None:
        return None
    receipt_day = _local_day(received_at, tz)
    return calendar.add_working_days(receipt_day, regime.acknowledgement_business_days)


def reminders_due(
    *,
    due_date: date,
    now: datetime,
    tz: ZoneInfo,
    thresholds: Sequence[int],
    already_sent: Collection[int],
) -> list[int]:
    """Reminder thresholds (days before ``due_date``) whose moment has come and that were not
    sent yet, largest first.

    Thresholds already passed are still returned, even once overdue: a sweep that missed a day
    (downtime) must not silently skip a reminder staff rely on. The caller decides whether to
    send each or only the most urgent and record them all.
    """
    left = days_left(due_date, now=now, tz=tz)
    return sorted(
        {t for t in thresholds if left <= t and t not in already_sent},
        reverse=True,
    )


# --- helpers -------------------------------------------------------------------------------


def _require_aware(value: datetime, name: str) -> None:
    # A naive instant has no defined local day; guessing would move deadlines by a day.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a time-zone-aware datetime")


def _local_day(instant: datetime, tz: tzinfo) -> date:
    _require_aware(instant, "instant")
    return instant.astimezone(tz).date()


def _last_day_of_month(year: int, month: int) -> int:
    first_of_next = date(year + month // 12, month % 12 + 1, 1)
    return (first_of_next - timedelta(days=1)).day


def _restart_day(
    waits: Sequence[IdentityWait], *, receipt_day: date, now: datetime, tz: ZoneInfo
) -> tuple[date, str]:
    """Start day for restart regimes: the local day the last requested identity arrived."""
    last = max(waits, key=lambda wait: wait.started_at)
    if last.ended_at is None:
        arrived = _local_day(now, tz)
        step = (
            "Identity information requested from the subject is still awaited; the period "
            f"will run from the day it arrives (counted provisionally from today, {_day(arrived)})."
        )
    else:
        arrived = _local_day(last.ended_at, tz)
        step = (
            f"Identity information requested from the subject arrived on {_day(arrived)}; "
            "the period runs from that day, which is not counted."
        )
    return max(arrived, receipt_day), step


def _paused_days(
    waits: Sequence[IdentityWait], *, receipt_day: date, now: datetime, tz: ZoneInfo
) -> int:
    """Local days during which identity was awaited, each day counted once.

    A wait spans from the local day it started to the local day it ended (or today); waits
    that overlap are merged so that no day suspends the clock twice, and nothing before the
    receipt day counts.
    """
    spans: list[tuple[date, date]] = []
    for wait in waits:
        start = max(_local_day(wait.started_at, tz), receipt_day)
        end = _local_day(wait.ended_at if wait.ended_at is not None else now, tz)
        if end > start:
            spans.append((start, end))
    total = 0
    covered_until: date | None = None
    for start, end in sorted(spans):
        if covered_until is not None:
            start = max(start, covered_until)
        if end > start:
            total += (end - start).days
        covered_until = end if covered_until is None else max(covered_until, end)
    return total


def _clamp_note(start_day: date, period: Period) -> str:
    if not period.months:
        return ""
    month_end = add_period(start_day, Period(months=period.months))
    if month_end.day == start_day.day:
        return ""
    return (
        f" (there is no {start_day.day} {_MONTHS[month_end.month - 1]} {month_end.year}, so the "
        "last day of that month)"
    )


def _days_between(first: date, stop: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((stop - first).days)]


def _why_not_working(day: date, calendar: WorkingCalendar) -> str:
    reasons = []
    if day.weekday() >= 5:
        reasons.append(f"a {_WEEKDAYS[day.weekday()]}")
    name = calendar.holiday_name(day)
    if name is not None:
        reasons.append(f"a public holiday in {calendar.country} ({name})")
    return f"{_day(day)} is {' and '.join(reasons)}"


def _day(day: date) -> str:
    # English names spelled out here: strftime("%A") would follow the process locale.
    return f"{_WEEKDAYS[day.weekday()]} {day.day} {_MONTHS[day.month - 1]} {day.year}"


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}" + ("" if n == 1 else "s")


def _zone_name(tz: tzinfo) -> str:
    return getattr(tz, "key", None) or str(tz)


def _rfc3339(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")
